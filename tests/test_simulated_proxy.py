"""`aiohttp-proxy --simulate`: the proxy in front of its built-in simulated vLLM, in its own
process, as an operator's first try meets it; and `make run` with no UPSTREAM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import environ_without_settings, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("aiohttp-proxy")
FAST = "--ttft 0.01 --itl 0.002 --output-tokens 10"


def command() -> list[str]:
    """The console script pip installed beside this interpreter (the README's command)."""
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "metrics_proxy"]


@asynccontextmanager
async def running(argv: list[str], env: dict[str, str], port: int) -> AsyncIterator[list[bytes]]:
    """``argv`` serving on ``port`` until the block ends, then SIGINT to its process group (a
    Ctrl-C at a terminal) and a bounded wait; yields where its stderr will be."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    stderr: list[bytes] = []
    try:
        await wait_until_serving(f"http://127.0.0.1:{port}", process)
        yield stderr
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGINT)
        async with asyncio.timeout(20):
            stderr.append((await process.communicate())[1])


def series(text: str, name: str, **labels: str) -> float:
    """One sample of a /metrics page."""
    for line in text.splitlines():
        found = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if found and all(f'{k}="{v}"' in found[1] for k, v in labels.items()):
            return float(found[2])
    raise KeyError((name, labels))


async def test_simulate_serves_chat_completions_and_counts_them() -> None:
    port = free_port()
    argv = [*command(), "--simulate", "--simulate-options", FAST, "--model-name", "sim"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    async with running(argv, environ_without_settings(), port) as stderr:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            stream = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
            async with session.post(url + "/v1/chat/completions", json=stream) as response:
                assert response.status == 200
                assert (await response.read()).endswith(b"data: [DONE]\n\n")
            cut = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
            async with session.post(url + "/v1/chat/completions", json=cut) as response:
                assert (await response.json())["usage"]["completion_tokens"] == 3
            async with session.get(url + "/metrics") as response:
                text = await response.text()
    labels = {"model_name": "sim", "engine": "proxy"}
    assert series(text, "vllm:request_success_total", finished_reason="length", **labels) == 1
    assert series(text, "vllm:request_success_total", finished_reason="stop", **labels) == 1
    assert series(text, "vllm:generation_tokens_total", **labels) >= 3 + 1
    assert series(text, "vllm:time_to_first_token_seconds_count", **labels) == 1
    (log,) = stderr
    announced = log.decode().splitlines()[0]
    assert " WARNING metrics_proxy.simulator: simulated vLLM serving model sim on " in announced
    assert "its answers are SIMULATED" in announced
    assert "Traceback" not in log.decode()


async def test_simulate_from_the_environment_with_background_traffic() -> None:
    # The traffic goes through the proxy, with a client key since the proxy asks for one.
    port = free_port()
    env = environ_without_settings() | {
        "PROXY_SIMULATE": "true",
        "PROXY_SIMULATE_OPTIONS": f"{FAST} --traffic 50 --seed 1",
        "PROXY_MODEL_NAME": "traffic-model",
        "PROXY_HOST": "127.0.0.1",
        "PROXY_PORT": str(port),
        "PROXY_API_KEY": "sk-client",
    }
    async with running(command(), env, port):
        headers = {"Authorization": "Bearer sk-client"}
        async with aiohttp.ClientSession(headers=headers) as session, asyncio.timeout(15):
            while True:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                done = series(text, "vllm:e2e_request_latency_seconds_count")
                if done >= 5:
                    break
                await asyncio.sleep(0.05)  # nothing to await: the traffic is the proxy's own


async def test_simulate_with_model_name_auto_counts_the_simulators_model() -> None:
    port = free_port()
    argv = [*command(), "--simulate", "--model-name", "auto", "--host", "127.0.0.1"]
    argv += ["--simulate-options", f"{FAST} --traffic 50 --seed 1", "--port", str(port)]
    async with (
        running(argv, environ_without_settings(), port),
        aiohttp.ClientSession() as session,
        asyncio.timeout(15),
    ):
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
            with contextlib.suppress(KeyError):  # until the list is read
                labels = {"model_name": "my-model"}
                if series(text, "vllm:e2e_request_latency_seconds_count", **labels) >= 3:
                    break
            await asyncio.sleep(0.05)  # nothing to await: the traffic is the proxy's own
    assert 'model_name="auto"' not in text


async def test_make_run_without_upstream_serves_the_simulated_vllm() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    port = free_port()
    env = {k: v for k, v in environ_without_settings().items() if k not in ("UPSTREAM", "MODEL")}
    env |= {"PROXY_HOST": "127.0.0.1", "PROXY_PORT": str(port)}
    # This interpreter stands in for .venv's, and INSTALLED= drops the install step: the test
    # runs `make run` as it is, but installs nothing.
    argv = ["make", "--no-print-directory", "run", f"PY={sys.executable}", "INSTALLED="]
    argv += [f"SIMULATE={FAST}"]
    async with running(argv, env, port) as stderr, aiohttp.ClientSession() as session:
        body = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with session.post(url, json=body) as response:
            assert response.status == 200
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
        async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    assert (
        series(text, "vllm:request_success_total", model_name="my-model", finished_reason="stop")
        == 1
    )
    log = stderr[0].decode()
    assert "its answers are SIMULATED" in log
    assert log.rstrip().endswith("INFO metrics_proxy: stopped")  # a clean stop
    assert "Traceback" not in log
