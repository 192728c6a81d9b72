"""A request body cannot hold an exchange: Expect is answered by the proxy alone, and a client
that stops sending its body on a forwarded path is ended by --client-timeout."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from tests.support.raw_peers import RawMessage, RawUpstream, read_message, response_head
from tests.support.stack import StackFactory

CHAT = "/v1/chat/completions"
COMPLETION = orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
)


async def answer_once_the_body_is_in(
    request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Never sends 100 Continue: it answers once it has read the whole body, as many do."""
    length = f"Content-Length: {len(COMPLETION)}"
    writer.write(response_head(200, "Content-Type: application/json", length) + COMPLETION)
    await writer.drain()


@pytest.mark.parametrize("path", [CHAT, "/tokenize"], ids=["metered", "forwarded"])
async def test_expect_100_continue_is_answered_by_the_proxy_alone(
    make_stack: StackFactory, path: str
) -> None:
    body = orjson.dumps({"model": "m", "messages": []})
    async with RawUpstream(answer_once_the_body_is_in) as upstream:
        stack = await make_stack(upstream_url=upstream.url)
        async with asyncio.timeout(10):  # far below the 600 s read timeout
            response = await stack.client.post(path, data=body, expect100=True)
            assert (response.status, await response.read()) == (200, COMPLETION)
    (seen,) = upstream.requests
    assert "Expect" not in seen.headers
    assert seen.body == body
    assert await stack.gauges() == (0, 0)


async def answer_at_once_then_hold(
    request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers before the body is in, then reads it for as long as the connection lasts."""
    head = response_head(200, "Content-Type: text/plain", "Transfer-Encoding: chunked")
    writer.write(head + b"2\r\nok\r\n")
    await writer.drain()
    await reader.read()
    raise ConnectionResetError("the proxy closed the connection")


STALLED_BODY = b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"


async def test_a_forwarded_body_that_stalls_gets_408(make_stack: StackFactory) -> None:
    async with RawUpstream(answer_once_the_body_is_in) as upstream:
        stack = await make_stack(upstream_url=upstream.url, client_timeout=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
        try:
            writer.write(STALLED_BODY)  # the rest never comes
            async with asyncio.timeout(10):
                answer = await read_message(reader)
                await upstream.cut.wait()
        finally:
            writer.close()
    assert answer.status == 408
    assert orjson.loads(answer.body)["error"]["code"] == 408
    assert answer.headers["Connection"] == "close"
    assert await stack.value("proxy_errors_total", kind="client_timeout") == 1
    assert await stack.value("http_requests_total", handler="/tokenize", status="4xx") == 1


async def test_a_forwarded_body_that_stalls_after_the_answer_cuts_it(
    make_stack: StackFactory,
) -> None:
    async with RawUpstream(answer_at_once_then_hold, read_body=False) as upstream:
        stack = await make_stack(upstream_url=upstream.url, client_timeout=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
        try:
            writer.write(STALLED_BODY)
            async with asyncio.timeout(10):
                answer = await read_message(reader, body=False)
                with contextlib.suppress(ConnectionResetError):
                    await reader.read()  # to the end of the connection, which the proxy cuts
                await upstream.cut.wait()
        finally:
            writer.close()
    assert answer.status == 200
    assert await stack.value("proxy_errors_total", kind="client_timeout") == 1
    assert await stack.value("http_requests_total", handler="/tokenize", status="4xx") == 1
