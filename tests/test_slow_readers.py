"""A client that stops reading cannot hold its request: writes to it have a deadline, and
meanwhile the proxy stops reading the upstream, so nothing piles up in between."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.support.raw_peers import RawMessage, RawUpstream, response_head
from tests.support.stack import Stack, StackFactory

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
STREAM = orjson.dumps({"model": "m", "messages": [], "stream": True})
METERED = (
    f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(STREAM)}\r\n\r\n".encode() + STREAM
)
FORWARDED = b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"


def event(content: str) -> bytes:
    delta = {"index": 0, "delta": {"content": content}, "finish_reason": None}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": [delta]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


BLOCK = event("x" * 1000) * 64  # 64 events, ~70 KB, one HTTP chunk
CHUNK = f"{len(BLOCK):x}\r\n".encode() + BLOCK + b"\r\n"
# Kernel socket buffers on loopback (the proxy's, autotuned, included) stay well below this;
# a proxy that kept reading its upstream while the client does not read would pass it.
BUFFERED_BOUND = 48 * 1024 * 1024


@dataclass
class EndlessStream:
    """An upstream that streams as fast as it is read, counting what it could send."""

    sent: int = 0

    async def __call__(
        self, request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = response_head(200, "Content-Type: text/event-stream", "Transfer-Encoding: chunked")
        writer.write(head)
        while self.sent < 4 * BUFFERED_BOUND:
            writer.write(CHUNK)
            await writer.drain()
            self.sent += len(CHUNK)


async def send_and_never_read(stack: Stack, request: bytes) -> socket.socket:
    """A client with a tiny receive window that sends its request and reads nothing."""
    port = stack.client.port
    assert port is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, request)
    return sock


async def wait_until_cut(sock: socket.socket) -> None:
    """Read what the proxy had sent until the connection ends."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 1 << 20):
            pass
    except ConnectionResetError:
        pass


async def counted_once(stack: Stack, name: str, **labels: str) -> None:
    """Poll until a series reads 1 (an http_* series exists only from its first count)."""
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(KeyError):
                if await stack.value(name, **labels) == 1:
                    return
            await asyncio.sleep(0.005)


async def ended_and_settled(stack: Stack, request: bytes) -> None:
    """The proxy gave up on the client: a disconnect (and abort) for a metered request, a 4xx
    for a forwarded one, and nothing left running."""
    if request is METERED:
        await counted_once(stack, "proxy_client_disconnects_total", stage="streaming")
        assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
        assert await stack.value("proxy_errors_total", kind="timeout") == 0
    else:
        await counted_once(stack, "http_requests_total", handler="none", status="4xx")
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize("request_bytes", [METERED, FORWARDED], ids=["metered", "forwarded"])
@pytest.mark.parametrize(
    "limits",
    [{"client_write_timeout": 1}, {"client_write_timeout": 0, "request_timeout": 2}],
    ids=["client-write-timeout", "request-timeout"],
)
async def test_a_client_that_stops_reading_is_cut_and_frees_its_slot(
    make_stack: StackFactory, request_bytes: bytes, limits: dict[str, Any]
) -> None:
    stream = EndlessStream()
    async with RawUpstream(stream) as upstream:
        stack = await make_stack(upstream_url=upstream.url, max_concurrency=1, **limits)
        client = await send_and_never_read(stack, request_bytes)
        try:
            await ended_and_settled(stack, request_bytes)
            async with asyncio.timeout(10):
                await upstream.cut.wait()  # the proxy closed its upstream connection
                await wait_until_cut(client)
        finally:
            client.close()
    assert stream.sent < BUFFERED_BOUND
