"""vLLM's other routes that run the engine, through the proxy: Cohere's chat, tokens in and
out, batched chat, the Decisions API, generative scoring, and SageMaker's /invocations, which
hands a body to chat, completions or pooling. Each takes a slot and counts its success, its
latencies and the tokens its usage reports; the client gets the upstream's bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support.fake_upstream import Behavior
from tests.support.stack import Stack

COHERE = "/cohere/v2/chat"
TOKENS = "/inference/v1/generate"
INVOCATIONS = "/invocations"
MESSAGES = [{"role": "user", "content": "hi"}]
DECODE_LIMIT = 64 * 1024


async def through_and_direct(
    stack: Stack, path: str, body: dict[str, Any], behavior: str = "{}"
) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    return await stack.through_and_direct(path, orjson.dumps(body), behavior)


async def success(stack: Stack, reason: str) -> float:
    return float(await stack.value("vllm:request_success_total", finished_reason=reason))


@pytest.mark.parametrize(
    ("finish", "reason"), [("stop", "stop"), ("length", "length"), ("tool_calls", "stop")]
)
async def test_a_cohere_chat_stream_is_metered(stack: Stack, finish: str, reason: str) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    behavior = orjson.dumps({"finish_reason": finish}).decode()
    through, direct = await through_and_direct(stack, COHERE, body, behavior)
    assert through == direct
    assert through[1].count(b'"type":"content-delta"') == 5
    assert stack.state.requests[0].body == orjson.dumps(body)
    assert await stack.counts() == (7, 5, 0)  # from message-end's usage, written as 7.0 and 5.0
    assert await success(stack, reason) == 1
    assert await stack.observed("vllm:time_to_first_token_seconds") == 1
    assert await stack.observed("vllm:inter_token_latency_seconds") == 4
    assert await stack.value("http_requests_total", handler=COHERE, status="2xx") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_cohere_chat_stream_that_fails_counts_as_an_error(stack: Stack) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    through, direct = await through_and_direct(stack, COHERE, body, '{"finish_reason": "error"}')
    assert through == direct
    assert b'"finish_reason":"ERROR"' in through[1]
    assert await success(stack, "error") == 1
    assert await stack.value("proxy_errors_total", kind="upstream_stream_error") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_cohere_chat_stream_without_usage_is_estimated(stack: Stack) -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": "true"}
    through, direct = await through_and_direct(stack, COHERE, body, '{"usage": "never"}')
    assert through == direct
    assert await stack.counts() == (0, 5, 1)  # the events carrying text
    assert await success(stack, "stop") == 1


async def test_a_cohere_chat_answer_is_metered(stack: Stack) -> None:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 5}
    through, direct = await through_and_direct(stack, COHERE, body, '{"finish_reason": "length"}')
    assert through == direct
    assert b'"finish_reason":"MAX_TOKENS"' in through[1]
    assert await stack.counts() == (7, 5, 0)
    assert await success(stack, "length") == 1
    assert await stack.observed("vllm:time_to_first_token_seconds") == 0
    assert (await stack.value("vllm:request_params_max_tokens"))["sum"] == 5


async def test_a_large_cohere_chat_answer_is_read_as_it_passes(stack: Stack) -> None:
    content = [{"type": "text", "text": "word " * 20000}]
    usage = {"tokens": {"input_tokens": 3.0, "output_tokens": 9.0}}
    answer = {"id": "c", "message": {"role": "assistant", "content": content}}
    raw = orjson.dumps(answer | {"finish_reason": "MAX_TOKENS", "usage": usage})
    assert len(raw) > DECODE_LIMIT
    stack.state.behavior = Behavior(raw_body=raw, split=5000)  # too large for a header
    through, _ = await through_and_direct(stack, COHERE, {"model": "m", "messages": []})
    assert through == (200, raw)
    assert await stack.counts() == (3, 9, 0)
    assert await success(stack, "length") == 1


async def test_tokens_in_and_out_streamed_count_exactly(stack: Stack) -> None:
    params = {"max_tokens": 5, "n": 2}
    body = {"token_ids": [1, 2, 3], "sampling_params": params, "stream": True}
    through, direct = await through_and_direct(stack, TOKENS, body)
    assert through == direct  # the usage chunk the proxy asked for never reaches the client
    assert b'"choices":[]' not in through[1]
    sent = orjson.loads(stack.state.requests[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert await stack.counts() == (7, 10, 0)
    assert await stack.observed("vllm:time_to_first_token_seconds") == 1
    assert await stack.observed("vllm:inter_token_latency_seconds") == 9
    assert (await stack.value("vllm:request_params_n"))["sum"] == 2
    assert (await stack.value("vllm:request_params_max_tokens"))["sum"] == 5
    assert await stack.value("http_requests_total", handler=TOKENS, status="2xx") == 1


@pytest.mark.parametrize(("usage", "expected"), [("honor", (7, 5, 0)), ("never", (0, 0, 1))])
async def test_tokens_in_and_out_answered_whole(
    stack: Stack, usage: str, expected: tuple[int, int, int]
) -> None:
    body = {"token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 5}}
    behavior = orjson.dumps({"usage": usage, "finish_reason": "length"}).decode()
    through, direct = await through_and_direct(stack, TOKENS, body, behavior)
    assert through == direct
    assert await stack.counts() == expected
    assert await success(stack, "length") == 1


async def test_a_batch_of_chats_counts_every_conversation(stack: Stack) -> None:
    body = {"model": "m", "messages": [MESSAGES, MESSAGES, MESSAGES]}
    through, direct = await through_and_direct(stack, "/v1/chat/completions/batch", body)
    assert through == direct
    assert await stack.counts() == (7, 15, 0)
    assert await success(stack, "stop") == 1
    assert await stack.observed("vllm:e2e_request_latency_seconds") == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/decisions", {"model": "m", "input": "hi", "questions": [{"type": "predicate"}]}),
        ("/generative_scoring", {"query": "q", "items": ["a", "b"], "label_token_ids": [1]}),
    ],
)
async def test_answers_that_generate_count_their_usage(
    stack: Stack, path: str, body: dict[str, Any]
) -> None:
    through, direct = await through_and_direct(stack, path, body, '{"completion_tokens": 2}')
    assert through == direct
    assert await stack.counts() == (7, 2, 0)
    assert await success(stack, "stop") == 1
    for name in ("e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert await stack.observed(f"vllm:{name}") == 1
    assert await stack.value("http_requests_total", handler=path, status="2xx") == 1
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize(
    ("body", "first_tokens", "generated"),
    [
        ({"messages": MESSAGES, "stream": True}, 1, 5),  # chat
        ({"prompt": "hi", "stream": True}, 1, 5),  # completions
        ({"input": ["a", "b"]}, 1, 0),  # embeddings: the answer is the output
        ({"query": "q", "documents": ["a"]}, 1, 0),  # rerank
        ({"messages": MESSAGES}, 0, 5),  # chat, not streamed
    ],
)
async def test_invocations_meter_each_body_as_the_api_it_goes_to(
    stack: Stack, body: dict[str, Any], first_tokens: int, generated: int
) -> None:
    through, direct = await through_and_direct(stack, INVOCATIONS, {"model": "m", **body})
    assert through == direct
    sent = orjson.loads(stack.state.requests[0].body)
    if body.get("stream"):  # asked for usage in the client's stead, as on chat's own route
        assert sent["stream_options"] == {"include_usage": True}
    else:
        assert sent == {"model": "m", **body}
    assert await stack.counts() == (7, generated, 0)
    assert await success(stack, "stop") == 1
    assert await stack.observed("vllm:time_to_first_token_seconds") == first_tokens
    assert await stack.value("http_requests_total", handler=INVOCATIONS, status="2xx") == 1
    assert await stack.gauges() == (0, 0)
