"""The real command: `python -m metrics_proxy.proxy_server` serving in its own process."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.support.processes import environ_without_settings, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent


async def test_the_command_serves_configured_by_environment(fake_upstream_url: str) -> None:
    port = free_port()
    env = environ_without_settings()
    env |= {
        "PROXY_UPSTREAM_URL": fake_upstream_url,
        "PROXY_MODEL_NAME": "env-model",
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_ENGINE_LABEL": "e7",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metrics_proxy.proxy_server",
        "--log-level",
        "warning",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(url, process)
        async with aiohttp.ClientSession() as session:
            body = b'{"messages": [], "stream": true}'
            async with session.post(url + "/v1/chat/completions", data=body) as response:
                assert response.status == 200
                assert (await response.read()).endswith(b"data: [DONE]\n\n")
            async with session.get(url + "/metrics") as response:
                text = await response.text()
        assert 'vllm:generation_tokens_total{engine="e7",model_name="env-model"} 5.0' in text
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert b"Traceback" not in stderr


async def test_a_taken_port_is_one_clear_line_and_exit_1(fake_upstream_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = environ_without_settings()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metrics_proxy.proxy_server", "--upstream-url", fake_upstream_url,
            "--model-name", "m", "--host", "127.0.0.1", "--port", str(port),
            cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}".encode() in stderr
    assert b"Traceback" not in stderr
