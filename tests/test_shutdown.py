"""Graceful shutdown of the real command: SIGTERM, and Ctrl-C once or twice."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import FAKE_STATE, Behavior, FakeUpstreamState, make_fake_upstream
from tests.support.processes import environ_without_settings, free_port, wait_until_serving

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
STREAM = b'{"messages": [], "stream": true}'


class Proxy:
    def __init__(self, url: str, process: asyncio.subprocess.Process) -> None:
        self.url = url
        self.process = process


@pytest.fixture
async def upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> tuple[str, FakeUpstreamState]:
    app = make_fake_upstream(Behavior(itl=0.05, completion_tokens=20))
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), app[FAKE_STATE]


@pytest.fixture
async def start_proxy(
    upstream: tuple[str, FakeUpstreamState],
) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    started: list[asyncio.subprocess.Process] = []

    async def start(*flags: str) -> Proxy:
        port = free_port()
        env = environ_without_settings()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metrics_proxy.proxy_server", "--upstream-url", upstream[0],
            "--model-name", "m", "--host", "127.0.0.1", "--port", str(port), *flags,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        await wait_until_serving(url, process)
        return Proxy(url, process)

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_until(response: aiohttp.ClientResponse, marker: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(10):
        while marker not in seen:
            seen += await response.content.readany()
    return seen


async def test_sigterm_lets_streams_finish_and_refuses_new_work(
    start_proxy: Callable[..., Awaitable[Proxy]],
) -> None:
    proxy = await start_proxy("--shutdown-grace-period", "30")
    async with aiohttp.ClientSession() as session:
        stream = await session.post(proxy.url + CHAT, data=STREAM)
        seen = await read_until(stream, b"tok2 ")
        proxy.process.send_signal(signal.SIGTERM)
        # Draining: not ready, no new work, liveness still fine; the stream goes on.
        async with asyncio.timeout(5):
            while True:
                async with session.get(proxy.url + "/internal/readyz") as ready:
                    if ready.status == 503:
                        assert await ready.json() == {"status": "draining"}
                        break
        async with session.post(proxy.url + CHAT, data=STREAM) as refused:
            assert refused.status == 503
        rest = await stream.read()
        assert (seen + rest).endswith(b"data: [DONE]\n\n")
        assert (seen + rest).count(b'"content":"tok') == 20
    async with asyncio.timeout(15):
        _, stderr = await proxy.process.communicate()
    assert proxy.process.returncode == 0
    assert b"finished_reason=stop" in stderr
    assert b"Traceback" not in stderr


def shutdown_error(stream: bytes) -> dict[str, Any]:
    """The error of the event a stream ends with: the one an upstream failure also ends it with."""
    last = stream.removesuffix(b"\n\n").rsplit(b"\n\n", 1)[-1]
    error: dict[str, Any] = orjson.loads(last.removeprefix(b"data: "))["error"]
    return error


async def read_log_until(process: asyncio.subprocess.Process, marker: bytes) -> bytes:
    """The proxy's log up to and including the line holding ``marker``."""
    assert process.stderr is not None
    seen = b""
    async with asyncio.timeout(10):
        while marker not in seen:
            line = await process.stderr.readline()
            assert line, seen.decode(errors="replace")
            seen += line
    return seen


async def test_a_stream_outliving_the_grace_period_ends_with_an_error_event_as_an_abort(
    start_proxy: Callable[..., Awaitable[Proxy]], upstream: tuple[str, FakeUpstreamState]
) -> None:
    proxy = await start_proxy("--shutdown-grace-period", "0.3")
    async with aiohttp.ClientSession() as session:
        stream = await session.post(
            proxy.url + CHAT, data=STREAM, headers={"X-Fake-Behavior": '{"stall_after": 1}'}
        )
        seen = await read_until(stream, b"tok0 ")
        proxy.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            seen += await stream.read()  # the stream ends whole, not cut
    assert shutdown_error(seen)["message"].startswith("The proxy is shutting down")
    assert b"[DONE]" not in seen
    async with asyncio.timeout(15):
        _, stderr = await proxy.process.communicate()
    assert proxy.process.returncode == 0
    assert b"finished_reason=abort" in stderr
    assert b"grace period over: ending 1 requests" in stderr
    assert b"Traceback" not in stderr
    await upstream[1].wait_for_closed(1)


async def test_ctrl_c_drains_saying_how_long_and_a_second_ctrl_c_stops_at_once(
    start_proxy: Callable[..., Awaitable[Proxy]], upstream: tuple[str, FakeUpstreamState]
) -> None:
    proxy = await start_proxy("--shutdown-grace-period", "30")
    async with aiohttp.ClientSession() as session:
        stream = await session.post(
            proxy.url + CHAT, data=STREAM, headers={"X-Fake-Behavior": '{"stall_after": 1}'}
        )
        seen = await read_until(stream, b"tok0 ")
        proxy.process.send_signal(signal.SIGINT)
        log = await read_log_until(proxy.process, b"draining")
        (line,) = [line for line in log.splitlines() if b"draining" in line]
        assert line.endswith(
            b"draining: 1 requests in flight get up to 30 s (--shutdown-grace-period) to "
            b"finish; press Ctrl-C again to stop now"
        )
        async with session.get(proxy.url + "/internal/readyz") as ready:
            assert ready.status == 503
        proxy.process.send_signal(signal.SIGINT)
        # At once: far within the 30 s grace period.
        async with asyncio.timeout(10):
            seen += await stream.read()
            _, stderr = await proxy.process.communicate()
    assert shutdown_error(seen)["message"].startswith("The proxy is shutting down")
    assert proxy.process.returncode == 130
    assert b"stopping now: ending 1 requests still in flight" in stderr
    assert b"finished_reason=abort" in stderr
    assert b"Traceback" not in stderr
    await upstream[1].wait_for_closed(1)
