"""OpenAI's Responses API (``/v1/responses``) against ``transformers serve``, which streams
unless told otherwise: the proxy tells a stream from its Content-Type, and passes either on
as the server sent it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.exchange import EVENT_STREAM, comparable, exchange
from tests.e2e.real_server import RealServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RESPONSES = "/v1/responses"
MAX_TOKENS = 8
# How a client asks: no word on streaming (the server streams), or its choice.
SHAPES: dict[str, dict[str, Any]] = {
    "unsaid": {},
    "stream": {"stream": True},
    "json": {"stream": False},
}


def body(**extra: Any) -> dict[str, Any]:
    return {"input": "kaka lolo mimi", "max_output_tokens": MAX_TOKENS, **extra}


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_response_passes_through_as_the_server_sent_it(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory, shape: str
) -> None:
    proxy = await make_proxy()
    request = body(**SHAPES[shape])
    direct = await exchange(http, real_server.url + RESPONSES, request)
    through = await exchange(http, proxy.url(RESPONSES), request)
    assert direct.status == through.status == 200
    assert direct.streamed == (shape != "json")
    assert through.content_type == direct.content_type
    assert comparable(through.body) == comparable(direct.body)
    if direct.streamed:
        assert direct.events[-1]["type"] == "response.completed"
        assert through.outputs == direct.outputs > 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_response_is_counted_as_the_server_reported_it(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory, shape: str
) -> None:
    proxy = await make_proxy()
    through = await exchange(http, proxy.url(RESPONSES), body(**SHAPES[shape]))
    assert through.status == 200
    settled_at = await proxy.settled()
    # transformers says "completed" even when max_output_tokens cut the reply: no finish
    # reason to hold the proxy to, but a finished request.
    reasons = await proxy.by_label("vllm:request_success_total", "finished_reason")
    assert sum(reasons.values()) == 1
    assert not reasons.keys() & {"abort", "error"}
    prompt, generated = through.usage
    assert await proxy.value("vllm:prompt_tokens_total") == prompt
    assert await proxy.value("vllm:generation_tokens_total") == generated == MAX_TOKENS
    assert await proxy.value("proxy_estimated_token_counts_total") == 0
    e2e = await proxy.value("vllm:e2e_request_latency_seconds")
    assert e2e["count"] == 1
    assert 0 < e2e["sum"] <= settled_at - through.started
    ttft = await proxy.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == (through.content_type == EVENT_STREAM)
    if through.streamed:
        assert 0 < ttft["sum"] <= through.ttft
