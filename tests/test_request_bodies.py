"""A request body cannot hold an exchange: Expect is answered by the proxy alone, and a client
that stops sending its body on a forwarded path is ended by --client-timeout."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from conftest import StackFactory
from raw_peers import RawMessage, RawUpstream, response_head

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
