"""A request's clock starts when its bytes reached the proxy's machine, not when the proxy's
loop got round to reading them: a request that waits in the proxy's socket while the loop is
busy has that wait in its TTFT and e2e (arrival_stamps.py). Served as the command serves
(``ArrivalSite``); the loop is blocked by the test itself for a known time, with the request
already sent."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from metrics_proxy.arrival_stamps import SO_TIMESTAMPNS, ArrivalSite, ArrivalStamps, take_arrival
from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.support.fake_upstream import make_fake_upstream
from tests.support.raw_peers import read_message
from tests.support.tools import require_module

BLOCKED = 0.3  # seconds the test holds the loop, the proxy's with it
TTFT = "vllm:time_to_first_token_seconds"
E2E = "vllm:e2e_request_latency_seconds"
BODY = b'{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true}'
CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
HEALTH = b"GET /internal/healthz HTTP/1.1\r\nHost: proxy\r\n\r\n"

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="kernel receive times are Linux's"
)


@pytest.fixture(autouse=True, scope="module")
def kernel_stamps_on() -> Iterator[None]:
    """Linux turns receive timestamps on for the whole stack lazily: the first socket that asks
    schedules the switch, and so does the last one closing for the switch back. A proxy started
    within moments of the last one's end (each test's) could have its first request stamped by
    nobody and fall back to the handler's clock. One socket asking for the whole module, and a
    datagram to itself until one comes back stamped (bounded), take that race away."""
    if not sys.platform.startswith("linux"):
        yield
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            sock.sendto(b"?", sock.getsockname())
            ancillary = sock.recvmsg(1, socket.CMSG_SPACE(16))[1]
            if ancillary and any(data.strip(b"\0") for _, _, data in ancillary):
                break
            time.sleep(0.001)  # the kernel's deferred switch: nothing here can be awaited
        else:
            pytest.fail("the kernel gave no receive time within 5 s")
        yield


@asynccontextmanager
async def proxy(upstream_url: str) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """The proxy on a loopback port, its connections accepted as the command accepts them."""
    runner = web.AppRunner(create_app(Config(upstream_url=upstream_url, model_name="m")))
    await runner.setup()
    try:
        await ArrivalSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        yield runner, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def totals(url: str, name: str) -> tuple[float, int]:
    """(sum, count) of histogram ``name`` over all its series, from the JSON metrics page."""
    async with aiohttp.ClientSession() as session, session.get(url + "/internal/metrics") as got:
        families = json.loads(await got.read())["families"]
    samples = [s for f in families if f["name"] == name for s in f["samples"]]
    return sum(float(s["sum"]) for s in samples), sum(int(s["count"]) for s in samples)


async def answered(reader: asyncio.StreamReader, n: int = 1) -> None:
    """``n`` whole responses, each a 200."""
    for _ in range(n):
        message = await asyncio.wait_for(read_message(reader), 10)
        assert message.status == 200, message


def hold_the_loop() -> None:
    """Nothing on this loop runs meanwhile: the proxy cannot read what was sent."""
    time.sleep(BLOCKED)


async def idle_connection(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection the proxy has accepted and answered once: it awaits a request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rpartition(":")[2]))
    writer.write(HEALTH)
    await answered(reader)
    return reader, writer


@linux_only
async def test_ttft_and_e2e_count_the_time_a_request_waited_for_the_proxys_loop(
    fake_upstream_url: str,
) -> None:
    async with proxy(fake_upstream_url) as (_, url):
        reader, writer = await idle_connection(url)
        writer.write(CHAT)  # on its way at once: the socket's buffer is empty
        hold_the_loop()
        await answered(reader)
        writer.close()
        ttft, count = await totals(url, TTFT)
        e2e, _ = await totals(url, E2E)
    assert count == 1
    assert BLOCKED <= ttft < BLOCKED + 5
    assert BLOCKED <= e2e < BLOCKED + 5


@linux_only
async def test_each_request_on_a_kept_alive_connection_has_its_own_arrival(
    fake_upstream_url: str,
) -> None:
    async with proxy(fake_upstream_url) as (_, url):
        reader, writer = await idle_connection(url)
        writer.write(CHAT)
        await answered(reader)
        writer.write(CHAT)
        hold_the_loop()
        await answered(reader)
        writer.close()
        ttft, count = await totals(url, TTFT)
    assert count == 2
    assert BLOCKED <= ttft < BLOCKED + 5  # the second request's wait, once


@linux_only
async def test_a_pipelined_request_starts_its_clock_when_the_proxy_takes_it_up(
    fake_upstream_url: str,
) -> None:
    """Two requests in one write: the first's clock starts at their arrival, the second's
    when the proxy turns to it (the wait behind the first is not counted twice)."""
    async with proxy(fake_upstream_url) as (_, url):
        reader, writer = await idle_connection(url)
        writer.write(CHAT + CHAT)
        hold_the_loop()
        await answered(reader, 2)
        writer.close()
        ttft, count = await totals(url, TTFT)
    assert count == 2
    assert BLOCKED <= ttft < 2 * BLOCKED


@linux_only
async def test_headers_sent_slowly_start_the_clock_when_they_are_complete(
    fake_upstream_url: str,
) -> None:
    """A client's upload time is not the proxy's: the clock starts at the read that
    completed the headers, not at the request's first byte."""
    head, rest = CHAT[:30], CHAT[30:]
    async with proxy(fake_upstream_url) as (_, url):
        reader, writer = await idle_connection(url)
        writer.write(head)
        await asyncio.sleep(BLOCKED)  # the proxy reads the first bytes meanwhile
        writer.write(rest)
        await answered(reader)
        writer.close()
        ttft, count = await totals(url, TTFT)
    assert count == 1
    assert ttft < BLOCKED


async def test_without_kernel_times_the_clock_starts_when_the_handler_runs(
    fake_upstream_url: str,
) -> None:
    """A socket that gives no receive times (here a Unix socket; so do uvloop's): the
    connection is aiohttp's alone, served as ever, its clock started by the handler."""
    async with proxy(fake_upstream_url) as (runner, url):
        ours, theirs = socket.socketpair()
        server = runner.server
        assert server is not None
        buffer = memoryview(bytearray(1024))
        loop = asyncio.get_running_loop()
        transport, stamps = await loop.connect_accepted_socket(
            lambda: ArrivalStamps(server(), buffer), ours
        )
        assert transport.get_protocol() is not stamps  # handed to aiohttp's protocol at once
        reader, writer = await asyncio.open_connection(sock=theirs)
        writer.write(CHAT)
        hold_the_loop()
        await answered(reader)
        writer.close()
        transport.close()
        ttft, count = await totals(url, TTFT)
    assert count == 1
    assert ttft < BLOCKED


def test_on_uvloop_the_proxy_serves_with_the_handlers_clock() -> None:
    """uvloop's transports hand out no socket of asyncio's: every connection is aiohttp's
    alone, served as ever."""
    require_module("uvloop")
    import uvloop

    async def run() -> tuple[float, int]:
        upstream = web.AppRunner(make_fake_upstream())
        await upstream.setup()
        await web.TCPSite(upstream, "127.0.0.1", 0).start()
        try:
            async with proxy(f"http://127.0.0.1:{upstream.addresses[0][1]}") as (_, url):
                reader, writer = await idle_connection(url)
                writer.write(CHAT)
                hold_the_loop()
                await answered(reader)
                writer.close()
                return await totals(url, TTFT)
        finally:
            await upstream.cleanup()

    ttft, count = uvloop.run(run())
    assert count == 1
    assert ttft < BLOCKED


@pytest.mark.parametrize(
    ("age", "waited"),
    [(0.25, 0.25), (3600.0, 0.0), (-5.0, 0.0)],
    ids=["a-wait", "wall-clock-stepped-back", "wall-clock-stepped-ahead"],
)
def test_an_age_no_request_could_have_starts_the_clock_now(age: float, waited: float) -> None:
    """The stamp's age is read off the wall clock, which a time step can move: an age beyond
    any wait in the proxy's socket, or a negative one, is no age."""
    stamps = ArrivalStamps(asyncio.Protocol(), memoryview(bytearray(1)))
    stamps._received = time.time() - age
    request = cast(
        web.Request, SimpleNamespace(transport=SimpleNamespace(get_protocol=lambda: stamps))
    )
    assert take_arrival(request, lambda: 1000.0) == pytest.approx(1000.0 - waited, abs=0.05)
