"""Connect and write timeouts have real effects, tested against misbehaving loopback peers."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.stack import StackFactory

CHAT = "/v1/chat/completions"


@pytest.fixture
async def deaf_server() -> AsyncIterator[str]:
    """A loopback server that accepts connections and never reads a byte from them."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
def full_backlog() -> Iterator[str]:
    """A loopback port whose accept queue is full, so new connects hang without an answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    for sock in (*fillers, listener):
        sock.close()


async def test_write_timeout_cuts_a_request_the_upstream_does_not_read(
    make_stack: StackFactory, deaf_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metrics_proxy")
    stack = await make_stack(upstream_url=deaf_server, write_timeout=0.3, read_timeout=60)
    body = b'{"messages": [], "pad": "' + b"x" * (24 * 1024 * 1024) + b'"}'
    async with asyncio.timeout(20):  # far below the 60 s read timeout
        response = await stack.client.post(CHAT, data=io.BytesIO(body))
    assert response.status == 504
    assert (await response.json())["error"]["code"] == 504
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    assert await stack.gauges() == (0, 0)
    (record,) = caplog.records
    assert 'cause="write timeout (--write-timeout) sending the request"' in record.getMessage()


async def test_connect_timeout(
    make_stack: StackFactory, full_backlog: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metrics_proxy")
    stack = await make_stack(upstream_url=full_backlog, connect_timeout=0.3)
    async with asyncio.timeout(10):
        response = await stack.client.post(CHAT, data=b'{"messages": []}')
    assert response.status == 504
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    assert await stack.gauges() == (0, 0)
    (record,) = caplog.records
    assert 'cause="connect timeout (--connect-timeout) connecting"' in record.getMessage()
