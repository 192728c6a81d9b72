"""A body still coming is relayed at transport level (relay.TransportRelay): what aiohttp's
per-read machinery did there must still hold: framing, the read timeout, the connection
pool, the headers' timing, and every byte in order however the upstream splits them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from tests.support.fake_upstream import BEHAVIOR_HEADER
from tests.support.raw_peers import read_message, response_head
from tests.support.stack import StackFactory
from tests.support.vllm_chunks import chat_event

CHAT = "/v1/chat/completions"
# The client asks for usage itself, so the proxy passes the stream on byte for byte.
STREAM_WITH_USAGE = orjson.dumps(
    {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
)


USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
)
EVENTS = (
    chat_event({"role": "assistant", "content": ""})
    + b"".join(chat_event({"content": f"tok{i} "}) for i in range(3))
    + chat_event({}, "stop")
    + USAGE
    + b"data: [DONE]\n\n"
)


class KeepAliveUpstream:
    """A loopback upstream that answers every request on a connection with EVENTS, its
    headers first and its body after ``release`` is set, in pieces of ``piece`` bytes, each
    its own chunk; it counts the connections it accepted."""

    def __init__(self, piece: int = 1 << 20) -> None:
        self.piece = piece
        self.connections = 0
        self.release = asyncio.Event()
        self.release.set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    await read_message(reader)
                except asyncio.IncompleteReadError:
                    return
                head = response_head(
                    200, "Content-Type: text/event-stream", "Transfer-Encoding: chunked"
                )
                writer.write(head)
                await writer.drain()
                await self.release.wait()
                for start in range(0, len(EVENTS), self.piece):
                    piece = EVENTS[start : start + self.piece]
                    writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@pytest.fixture
async def keep_alive_upstream() -> AsyncIterator[KeepAliveUpstream]:
    async with KeepAliveUpstream() as upstream:
        yield upstream


async def test_a_stream_that_keeps_talking_outlives_the_read_timeout(
    make_stack: StackFactory,
) -> None:
    # The read timeout is the longest silence, not the longest stream: 12 chunks 50 ms apart
    # run three times past a 0.2 s read timeout.
    stack = await make_stack(read_timeout=0.2)
    behavior = '{"completion_tokens": 12, "itl": 0.05}'
    response = await stack.client.post(
        CHAT, data=STREAM_WITH_USAGE, headers={BEHAVIOR_HEADER: behavior}
    )
    body = await response.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in body
    assert await stack.value("proxy_errors_total", kind="timeout") == 0
    assert await stack.value("vllm:generation_tokens_total") == 12


async def test_the_upstream_connection_is_pooled_after_a_relayed_stream(
    make_stack: StackFactory, keep_alive_upstream: KeepAliveUpstream
) -> None:
    upstream = keep_alive_upstream
    upstream.release.clear()  # each body comes after its headers: the transport relay's case
    stack = await make_stack(upstream_url=upstream.url)
    for _ in range(3):
        response = await stack.client.post(CHAT, data=STREAM_WITH_USAGE)
        assert response.status == 200
        upstream.release.set()
        assert await response.read() == EVENTS
        upstream.release.clear()
    assert upstream.connections == 1
    assert await stack.value("vllm:generation_tokens_total") == 9
    assert await stack.gauges() == (0, 0)


async def test_the_headers_reach_the_client_before_the_first_token(
    make_stack: StackFactory, keep_alive_upstream: KeepAliveUpstream
) -> None:
    # As from vLLM itself: the status comes at once, the tokens once the engine has them.
    upstream = keep_alive_upstream
    upstream.release.clear()
    stack = await make_stack(upstream_url=upstream.url)
    response = await asyncio.wait_for(stack.client.post(CHAT, data=STREAM_WITH_USAGE), 5)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    upstream.release.set()
    assert await response.read() == EVENTS


@pytest.mark.parametrize("piece", [1, 7, 64])
async def test_every_byte_arrives_in_order_however_the_upstream_splits_them(
    make_stack: StackFactory, keep_alive_upstream: KeepAliveUpstream, piece: int
) -> None:
    upstream = keep_alive_upstream
    upstream.piece = piece
    upstream.release.clear()
    stack = await make_stack(upstream_url=upstream.url)
    response = await stack.client.post(CHAT, data=STREAM_WITH_USAGE)
    upstream.release.set()
    assert await response.read() == EVENTS
    assert await stack.value("vllm:generation_tokens_total") == 3
    assert await stack.value("vllm:prompt_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


async def test_an_http10_client_gets_the_stream_unchunked(
    make_stack: StackFactory, keep_alive_upstream: KeepAliveUpstream
) -> None:
    upstream = keep_alive_upstream
    upstream.release.clear()
    stack = await make_stack(upstream_url=upstream.url)
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    try:
        writer.write(
            f"POST {CHAT} HTTP/1.0\r\nContent-Length: {len(STREAM_WITH_USAGE)}\r\n\r\n".encode()
            + STREAM_WITH_USAGE
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"chunked" not in head.lower()
        upstream.release.set()
        # Its end is the connection's close.
        assert await asyncio.wait_for(reader.read(), 5) == EVENTS
    finally:
        writer.close()
