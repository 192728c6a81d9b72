"""A stream the upstream cuts short reaches the client framed, so its connection stays usable."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.raw_peers import RawMessage, RawUpstream, read_message, response_head
from tests.support.stack import StackFactory
from tests.support.vllm_chunks import chat_event

CHAT = "/v1/chat/completions"
# The client asks for usage itself, so the proxy takes nothing out of the stream.
STREAM_WITH_USAGE = orjson.dumps(
    {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
)
MODELS = orjson.dumps({"object": "list", "data": []})


EVENTS = chat_event({"role": "assistant", "content": ""}) + chat_event({"content": "tok0 "})


async def promise_more_than_sent(
    request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A stream framed by a Content-Length it never reaches; anything else answered whole."""
    if request.target == CHAT:
        length = f"Content-Length: {len(EVENTS) + 1000}"
        writer.write(response_head(200, "Content-Type: text/event-stream", length) + EVENTS)
    else:
        length = f"Content-Length: {len(MODELS)}"
        writer.write(response_head(200, "Content-Type: application/json", length) + MODELS)
    await writer.drain()


async def test_a_stream_cut_short_is_framed_and_the_connection_goes_on(
    make_stack: StackFactory,
) -> None:
    async with RawUpstream(promise_more_than_sent) as upstream:
        stack = await make_stack(upstream_url=upstream.url)
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
        try:
            # Pipelined: a response longer or shorter than its framing would swallow the second.
            writer.write(
                f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(STREAM_WITH_USAGE)}"
                "\r\n\r\n".encode()
                + STREAM_WITH_USAGE
                + b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            async with asyncio.timeout(10):
                stream = await read_message(reader)
                models = await read_message(reader)
        finally:
            writer.close()
    assert stream.status == 200
    assert "Content-Length" not in stream.headers
    assert stream.body.startswith(EVENTS)
    last = stream.body.removesuffix(b"\n\n").rsplit(b"\n\n", 1)[-1]
    assert orjson.loads(last.removeprefix(b"data: "))["error"]["type"] == "upstream_error"
    assert (models.status, models.body) == (200, MODELS)
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.gauges() == (0, 0)
