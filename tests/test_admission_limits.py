"""A bounded queue: too many waiting → 429, waiting too long → 503; both counted."""

from __future__ import annotations

import asyncio

import orjson

from tests.support.fake_upstream import Behavior
from tests.support.stack import StackFactory

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [], "stream": True})


async def test_full_queue_refuses_with_429(make_stack: StackFactory) -> None:
    stack = await make_stack(
        Behavior(stall_before_headers=True), max_concurrency=1, max_queue_length=1
    )
    holder = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
    await stack.state.wait_for_requests(1)
    waiter = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
    await stack.wait_for("vllm:num_requests_waiting", 1)

    refused = await stack.client.post(CHAT, data=BODY)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    error = (await refused.json())["error"]
    assert (error["code"], error["type"]) == (429, "rate_limit_error")
    reasons = {"reason": "max_num_queued_reqs"}
    assert await stack.value("vllm:admission_rejections_total", **reasons) == 1
    assert await stack.gauges() == (1, 1)  # the refused one never counted as waiting

    for task in (waiter, holder):
        task.cancel()
    await stack.wait_for("vllm:num_requests_running", 0)
    await stack.wait_for("vllm:num_requests_waiting", 0)
    # Refused requests never ran: no vLLM request series counts them.
    samples = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    total = sum(sample["value"] for sample in samples)
    assert total == 2  # the two aborts


async def test_waiting_too_long_is_503(make_stack: StackFactory) -> None:
    stack = await make_stack(
        Behavior(stall_before_headers=True), max_concurrency=1, max_queue_wait=0.2
    )
    holder = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
    await stack.state.wait_for_requests(1)
    late = await stack.client.post(CHAT, data=BODY)
    assert late.status == 503
    assert late.headers["Retry-After"] == "1"
    assert (await late.json())["error"]["code"] == 503
    reasons = {"reason": "max_queue_wait"}
    assert await stack.value("vllm:admission_rejections_total", **reasons) == 1
    assert await stack.gauges() == (0, 1)
    holder.cancel()
    await stack.wait_for("vllm:num_requests_running", 0)
    stack.state.behavior = Behavior()
    response = await stack.client.post(CHAT, data=BODY)
    assert response.status == 200  # the slot the timed-out waiter never took is free
    await response.read()


async def test_defaults_keep_an_unbounded_queue(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True), max_concurrency=1)
    holder = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
    await stack.state.wait_for_requests(1)
    waiters = [asyncio.ensure_future(stack.client.post(CHAT, data=BODY)) for _ in range(20)]
    await stack.wait_for("vllm:num_requests_waiting", 20)
    for task in (*waiters, holder):
        task.cancel()
    await stack.wait_for("vllm:num_requests_waiting", 0)
    await stack.wait_for("vllm:num_requests_running", 0)
