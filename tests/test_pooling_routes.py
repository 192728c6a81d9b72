"""vLLM's pooling routes through the proxy: each request takes a concurrency slot like chat,
its prompt tokens come from the answer's usage, nothing is generated, and the answer is the
request's one output (one TTFT and prefill, taken at its arrival), as vLLM's engine counts a
pooling request. The client gets the upstream's bytes, large answers included."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

BODIES: dict[str, dict[str, Any]] = {
    "/v1/embeddings": {"model": "m", "input": ["a", "b"], "encoding_format": "float"},
    "/pooling": {"model": "m", "input": "a"},
    "/classify": {"model": "m", "input": ["a"]},
    "/score": {"model": "m", "text_1": "q", "text_2": ["a", "b"]},
    "/v1/score": {"model": "m", "text_1": "q", "text_2": "a"},
    "/rerank": {"model": "m", "query": "q", "documents": ["a", "b"]},
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a"]},
    "/v2/rerank": {"model": "m", "query": "q", "documents": ["a", "b", "c"], "top_n": 2},
    "/v2/embed": {"model": "m", "texts": ["a"], "embedding_types": ["float"]},
}
EMBEDDINGS = "/v1/embeddings"
DECODE_LIMIT = 64 * 1024  # answers past this are scanned as they pass, not decoded whole


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_pooling_request_counts_as_vllm_counts_it(stack: Stack, path: str) -> None:
    body = orjson.dumps(BODIES[path])
    through, direct = await stack.through_and_direct(path, body)
    assert through == direct
    assert through[0] == 200
    assert stack.state.requests[0].body == body  # nothing changed on the way
    assert await stack.counts() == (7, 0, 0)
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    for name in ("time_to_first_token", "e2e_request_latency"):
        assert await stack.observed(f"vllm:{name}_seconds") == 1
    for name in ("queue", "prefill", "inference"):
        assert await stack.observed(f"vllm:request_{name}_time_seconds") == 1
    assert await stack.observed("vllm:inter_token_latency_seconds") == 0
    assert await stack.value("http_requests_total", handler=path, status="2xx") == 1
    assert await stack.gauges() == (0, 0)


async def test_the_answer_is_the_requests_first_token(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(ttft=0.05))
    response = await stack.client.post(EMBEDDINGS, data=orjson.dumps(BODIES[EMBEDDINGS]))
    assert response.status == 200
    await response.read()
    ttft = await stack.value("vllm:time_to_first_token_seconds")
    prefill = await stack.value("vllm:request_prefill_time_seconds")
    e2e = await stack.value("vllm:e2e_request_latency_seconds")
    assert ttft["count"] == prefill["count"] == 1
    assert 0.05 <= prefill["sum"] <= ttft["sum"] <= e2e["sum"] < 1.0
    assert (await stack.value("vllm:request_decode_time_seconds"))["sum"] == 0
    assert await stack.value("vllm:generation_tokens_total") == 0


@pytest.mark.parametrize("split", [0, 1000, 7])
async def test_a_large_embeddings_answer_still_counts_its_usage(stack: Stack, split: int) -> None:
    body = orjson.dumps({"model": "m", "input": [f"text {i}" for i in range(3000)]})
    behavior = orjson.dumps({"split": split}).decode()
    through, direct = await stack.through_and_direct(EMBEDDINGS, body, behavior)
    assert through == direct
    assert len(through[1]) > DECODE_LIMIT
    assert await stack.counts() == (7, 0, 0)


async def test_a_large_cohere_embed_answer_finds_its_tokens_in_meta(stack: Stack) -> None:
    body = orjson.dumps({"model": "m", "texts": ["a"] * 6000, "embedding_types": ["float"]})
    through, direct = await stack.through_and_direct("/v2/embed", body, '{"split": 4096}')
    assert through == direct
    assert len(through[1]) > DECODE_LIMIT
    assert through[1].rstrip(b"}").endswith(b'"tokens":{"input_tokens":7')  # meta comes last
    assert await stack.counts() == (7, 0, 0)


@pytest.mark.parametrize("inputs", [1, 3000], ids=["small", "large"])
async def test_an_answer_without_usage_is_honestly_estimated(stack: Stack, inputs: int) -> None:
    body = orjson.dumps({"model": "m", "input": ["a"] * inputs})
    through, direct = await stack.through_and_direct(EMBEDDINGS, body, '{"usage": "never"}')
    assert through == direct
    assert await stack.counts() == (0, 0, 1)
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


@pytest.mark.parametrize(
    ("usage", "prompt"),
    [
        ({"prompt_tokens": 4, "total_tokens": 4}, 4),  # newer rerank answers
        ({"total_tokens": 4}, 4),  # older ones: a pooling request's total is its prompt
        ({"prompt_tokens": 4, "total_tokens": 9, "completion_tokens": 5}, 4),
    ],
)
async def test_rerank_usage_in_either_shape(
    stack: Stack, usage: dict[str, int], prompt: int
) -> None:
    answer = {"id": "rerank-1", "model": "m", "usage": usage, "results": []}
    behavior = orjson.dumps({"raw_body": orjson.dumps(answer).decode()}).decode()
    body = orjson.dumps(BODIES["/rerank"])
    through, _ = await stack.through_and_direct("/rerank", body, behavior)
    assert through == (200, orjson.dumps(answer))
    assert await stack.counts() == (prompt, 0, 0)


@pytest.mark.parametrize(("status", "counted"), [(400, 0), (500, 1)])
async def test_an_upstream_error_passes_through_and_is_no_success(
    stack: Stack, status: int, counted: int
) -> None:
    body = orjson.dumps(BODIES[EMBEDDINGS])
    through, direct = await stack.through_and_direct(EMBEDDINGS, body, f'{{"status": {status}}}')
    assert through == direct
    assert through[0] == status
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 0
    assert await stack.value("vllm:request_success_total", finished_reason="error") == counted
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    assert await stack.observed("vllm:time_to_first_token_seconds") == 0
    assert await stack.value("http_requests_total", handler=EMBEDDINGS, status=f"{status // 100}xx")
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_dying_mid_answer_cuts_the_client_off(stack: Stack) -> None:
    body = orjson.dumps(BODIES[EMBEDDINGS])
    headers = {BEHAVIOR_HEADER: '{"split": 40, "reset_after": 2}'}
    response = await stack.client.post(EMBEDDINGS, data=body, headers=headers)
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 0
    assert await stack.gauges() == (0, 0)


async def test_a_client_leaving_mid_answer_is_an_abort(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(split=40, stall_after=1))
    response = await stack.client.post(EMBEDDINGS, data=orjson.dumps(BODIES[EMBEDDINGS]))
    assert await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_client_leaving_before_the_answer_is_an_abort(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True))
    task = asyncio.ensure_future(
        stack.client.post(EMBEDDINGS, data=orjson.dumps(BODIES[EMBEDDINGS]))
    )
    await stack.state.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="before_headers")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await stack.observed("vllm:time_to_first_token_seconds") == 0
    assert await stack.gauges() == (0, 0)


async def test_pooling_requests_wait_for_a_slot_like_chat(make_stack: StackFactory) -> None:
    stack = await make_stack(max_concurrency=1)
    stalled = {BEHAVIOR_HEADER: '{"stall_before_headers": true}'}
    body = orjson.dumps(BODIES["/classify"])
    first = asyncio.ensure_future(stack.client.post("/classify", data=body, headers=stalled))
    await stack.state.wait_for_requests(1)
    second = asyncio.ensure_future(stack.client.post("/rerank", data=body))
    await stack.wait_for("vllm:num_requests_waiting", 1)
    assert len(stack.state.requests) == 1  # the second waits in the proxy's queue
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    response = await asyncio.wait_for(second, 5)
    assert response.status == 200
    await response.read()
    assert await stack.gauges() == (0, 0)
    assert await stack.observed("vllm:request_queue_time_seconds") == 2


async def test_bad_input_is_an_openai_error_and_never_sent(stack: Stack) -> None:
    response = await stack.client.post("/v1/score", data=b"{not json")
    assert response.status == 400
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "code"}
    wrong_method = await stack.client.get(EMBEDDINGS)
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"
    assert stack.state.requests == []
    assert await stack.value("proxy_errors_total", kind="bad_request") == 1
