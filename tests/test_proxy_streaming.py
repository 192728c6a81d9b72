"""Through the proxy, clients get the upstream's bytes; the metrics get exact counts."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


async def direct_bytes(stack: Stack, path: str, body: bytes, behavior: str = "{}") -> bytes:
    async with aiohttp.ClientSession() as session:
        url = stack.upstream.make_url(path)
        async with session.post(url, data=body, headers={BEHAVIOR_HEADER: behavior}) as response:
            return await response.read()


async def proxied(stack: Stack, path: str, body: bytes, behavior: str = "{}") -> bytes:
    response = await stack.client.post(path, data=body, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == 200
    return await response.read()


@pytest.mark.parametrize(
    "behavior",
    [
        "{}",
        '{"split": 7}',
        '{"split": 1}',
        '{"crlf": true, "keepalive": true}',
        '{"crlf": true, "split": 3}',
        '{"completion_tokens": 1, "role_chunk": false}',
    ],
)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
async def test_stream_bytes_are_identical_with_and_without_the_proxy(
    stack: Stack, path: str, behavior: str
) -> None:
    body = (
        chat_body(stream=True)
        if path == CHAT
        else orjson.dumps({"model": "m", "prompt": "hi", "stream": True})
    )
    through = await proxied(stack, path, body, behavior)
    assert through == await direct_bytes(stack, path, body, behavior)
    # ... while the proxy asked the upstream for usage, and counted exactly.
    sent = orjson.loads(stack.state.requests[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    tokens = orjson.loads(behavior).get("completion_tokens", 5)
    assert await stack.value("vllm:generation_tokens_total") == tokens
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await stack.gauges() == (0, 0)


async def test_client_that_asked_for_usage_gets_it_unchanged(stack: Stack) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    through = await proxied(stack, CHAT, body)
    assert through == await direct_bytes(stack, CHAT, body)
    assert b'"choices":[],"usage":{"prompt_tokens":7' in through
    assert stack.state.requests[0].body == body  # forwarded byte for byte


async def test_request_body_reaches_upstream_unchanged_apart_from_stream_options(
    stack: Stack,
) -> None:
    body = b'{"model": "m",  "messages": [], "stream": true, "max_tokens": 10}'
    await proxied(stack, CHAT, body)
    assert stack.state.requests[0].body == (
        b'{"stream_options":{"include_usage":true},"model": "m",  "messages": [], '
        b'"stream": true, "max_tokens": 10}'
    )


async def test_non_streaming_body_passes_and_usage_is_counted(stack: Stack) -> None:
    body = chat_body(max_tokens=16, n=1)
    through = await proxied(stack, CHAT, body)
    assert through == await direct_bytes(stack, CHAT, body)
    assert stack.state.requests[0].body == body
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    max_tokens = await stack.value("vllm:request_params_max_tokens")
    assert (max_tokens["count"], max_tokens["sum"]) == (1, 16)
    # Non-streaming: no first token is visible, so no TTFT (see README).
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 0
    assert (await stack.value("vllm:e2e_request_latency_seconds"))["count"] == 1


async def test_length_finish_and_parallel_sampling(stack: Stack) -> None:
    behavior = '{"finish_reason": "length", "completion_tokens": 3}'
    await proxied(stack, CHAT, chat_body(stream=True, n=2), behavior)
    assert await stack.value("vllm:request_success_total", finished_reason="length") == 1
    assert await stack.value("vllm:generation_tokens_total") == 6
    longest = await stack.value("vllm:request_max_num_generation_tokens")
    assert longest["sum"] == 3
    assert (await stack.value("vllm:request_params_n"))["sum"] == 2


async def test_event_stream_headers(stack: Stack) -> None:
    response = await stack.client.post(CHAT, data=chat_body(stream=True))
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    await response.read()


async def test_timings_follow_the_stream(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(ttft=0.05, itl=0.01, completion_tokens=4))
    await proxied(stack, CHAT, chat_body(stream=True))
    ttft = await stack.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == 1
    assert 0.05 <= ttft["sum"] < 1.0
    itl = await stack.value("vllm:inter_token_latency_seconds")
    assert itl["count"] == 3  # between 4 generated chunks; the role chunk does not count
    assert 0.03 <= itl["sum"] < 1.0
    decode = await stack.value("vllm:request_decode_time_seconds")
    assert decode["sum"] == pytest.approx(itl["sum"])
    tpot = await stack.value("vllm:request_time_per_output_token_seconds")
    assert tpot["sum"] == pytest.approx(decode["sum"] / 3)
    prefill = await stack.value("vllm:request_prefill_time_seconds")
    inference = await stack.value("vllm:request_inference_time_seconds")
    assert inference["sum"] == pytest.approx(prefill["sum"] + decode["sum"])
    e2e = await stack.value("vllm:e2e_request_latency_seconds")
    assert e2e["sum"] >= ttft["sum"] + decode["sum"]


async def test_upstream_without_usage_is_estimated_from_chunks(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(usage="never", completion_tokens=4))
    await proxied(stack, CHAT, chat_body(stream=True))
    assert await stack.value("vllm:generation_tokens_total") == 4
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


async def test_usage_mode_none_forwards_the_body_untouched(make_stack: StackFactory) -> None:
    stack = await make_stack(stream_usage="none")
    body = chat_body(stream=True)
    assert await proxied(stack, CHAT, body) == await direct_bytes(stack, CHAT, body)
    assert stack.state.requests[0].body == body
    assert await stack.value("proxy_estimated_token_counts_total") == 1


@pytest.mark.parametrize(
    "options",
    [None, {"include_usage": True}, {"include_usage": True, "continuous_usage_stats": True}],
)
async def test_continuous_usage_is_invisible_to_clients(
    make_stack: StackFactory, options: dict[str, bool] | None
) -> None:
    stack = await make_stack(stream_usage="continuous")
    extra: dict[str, Any] = {"stream": True}
    if options is not None:
        extra["stream_options"] = options
    body = chat_body(**extra)
    assert await proxied(stack, CHAT, body) == await direct_bytes(stack, CHAT, body)
    sent = orjson.loads(stack.state.requests[0].body)
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert await stack.value("vllm:generation_tokens_total") == 5


async def test_stream_without_done_but_with_finish_reason_is_a_normal_finish(
    stack: Stack,
) -> None:
    await proxied(stack, CHAT, chat_body(stream=True), '{"done": false}')
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.value("vllm:generation_tokens_total") == 5
