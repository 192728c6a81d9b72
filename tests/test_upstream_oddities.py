"""Odd upstreams: counts stay exact where the upstream gave usage, and clients see its bytes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.support.fake_upstream import BEHAVIOR_HEADER
from tests.support.stack import Stack

CHAT = "/v1/chat/completions"
STREAM = orjson.dumps({"model": "m", "messages": [], "stream": True})
PLAIN = orjson.dumps({"model": "m", "messages": []})


async def both(stack: Stack, body: bytes, behavior: str) -> tuple[bytes, bytes]:
    """(through the proxy, straight from the upstream) for the same request."""
    headers = {BEHAVIOR_HEADER: behavior}
    through = await stack.client.post(CHAT, data=body, headers=headers)
    proxied = await through.read()
    async with aiohttp.ClientSession() as session:
        url = stack.upstream.make_url(CHAT)
        async with session.post(url, data=body, headers=headers) as direct:
            return proxied, await direct.read()


async def test_non_json_body(stack: Stack) -> None:
    proxied, direct = await both(stack, PLAIN, '{"raw_body": "<html>oops</html>"}')
    assert proxied == direct == b"<html>oops</html>"
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.value("proxy_estimated_token_counts_total") == 1  # no usage to read


async def test_event_stream_with_the_wrong_content_type_passes_as_a_body(stack: Stack) -> None:
    proxied, direct = await both(stack, STREAM, '{"content_type": "text/plain"}')
    assert proxied == direct
    assert proxied.endswith(b"data: [DONE]\n\n")
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize(
    "behavior",
    [
        '{"done": false}',
        '{"split": 1, "crlf": true}',
        '{"keepalive": true, "split": 2}',
    ],
)
async def test_streams_without_done_split_everywhere_crlf_or_pinged_count_exactly(
    stack: Stack, behavior: str
) -> None:
    proxied, direct = await both(stack, STREAM, behavior)
    assert proxied == direct
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


async def test_an_upstream_that_always_sends_usage_counts_exactly(stack: Stack) -> None:
    # The proxy cannot tell this usage chunk from the one it asked for: either way it goes.
    proxied, direct = await both(stack, STREAM, '{"usage": "always", "split": 5}')
    assert proxied == direct.replace(direct.split(b"\n\n")[-3] + b"\n\n", b"")
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("proxy_estimated_token_counts_total") == 0


async def test_usage_on_every_chunk_is_exact(stack: Stack) -> None:
    body = orjson.dumps(
        {
            "messages": [],
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
    )
    proxied, direct = await both(stack, body, '{"completion_tokens": 9}')
    assert proxied == direct
    assert proxied.count(b'"usage":{') == 11  # role chunk, 9 tokens, the final usage chunk
    assert await stack.value("vllm:generation_tokens_total") == 9


async def test_stream_that_ends_without_finish_or_done_is_an_error(stack: Stack) -> None:
    behavior = '{"done": false, "finish_reason": null, "usage": "never"}'
    proxied, direct = await both(stack, STREAM, behavior)
    assert proxied == direct
    assert b'"finish_reason":"' not in direct
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1


async def test_an_error_event_from_the_upstream_is_counted(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    events = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"error":{"message":"engine died","type":"InternalServerError","code":500}}\n\n'
    )

    async def failing(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(events)
        return response

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", failing)
    upstream = await aiohttp_server(upstream_app)
    proxy = await aiohttp_client(
        create_app(Config(upstream_url=str(upstream.make_url("")), model_name="m"))
    )
    response = await proxy.post(CHAT, data=STREAM)
    assert await response.read() == events
    snapshot = {
        f["name"]: f for f in (await (await proxy.get("/internal/metrics")).json())["families"]
    }
    errors = {s["labels"]["kind"]: s["value"] for s in snapshot["proxy_errors_total"]["samples"]}
    assert errors["upstream_stream_error"] == 1
    reasons = {
        s["labels"]["finished_reason"]: s["value"]
        for s in snapshot["vllm:request_success_total"]["samples"]
    }
    assert reasons["error"] == 1
