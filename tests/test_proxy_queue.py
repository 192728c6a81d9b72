"""The queue: at most --max-concurrency upstream, the rest first-in first-out."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from metrics_proxy.admission import AdmissionQueue
from tests.support.fake_upstream import Behavior
from tests.support.stack import StackFactory

CHAT = "/v1/chat/completions"


def body(tag: str) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": tag}], "stream": True}
    )


async def test_requests_beyond_the_limit_wait_in_order(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True), max_concurrency=1)
    first = asyncio.ensure_future(stack.client.post(CHAT, data=body("first")))
    await stack.state.wait_for_requests(1)
    later = []
    for i in range(3):
        later.append(asyncio.ensure_future(stack.client.post(CHAT, data=body(f"w{i}"))))
        await stack.wait_for("vllm:num_requests_waiting", i + 1)
    assert await stack.gauges() == (3, 1)
    assert len(stack.state.requests) == 1  # nobody overtook the limit

    stack.state.behavior = Behavior()  # the waiting ones will be answered normally
    first.cancel()
    for task in later:
        response = await asyncio.wait_for(task, 5)
        assert response.status == 200
        await response.read()
    order = [orjson.loads(r.body)["messages"][0]["content"] for r in stack.state.requests]
    assert order == ["first", "w0", "w1", "w2"]
    queue_time = await stack.value("vllm:request_queue_time_seconds")
    assert queue_time["count"] == 4
    await stack.wait_for("vllm:num_requests_running", 0)
    assert await stack.gauges() == (0, 0)


async def test_client_leaving_the_queue_frees_its_place_at_once(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True), max_concurrency=1)
    holder = asyncio.ensure_future(stack.client.post(CHAT, data=body("holder")))
    await stack.state.wait_for_requests(1)
    leaver = asyncio.ensure_future(stack.client.post(CHAT, data=body("leaver")))
    await stack.wait_for("vllm:num_requests_waiting", 1)
    leaver.cancel()
    await stack.wait_for("vllm:num_requests_waiting", 0)
    assert await stack.value("proxy_client_disconnects_total", stage="waiting") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    holder.cancel()
    await stack.wait_for("vllm:num_requests_running", 0)
    stack.state.behavior = Behavior()
    response = await stack.client.post(CHAT, data=body("next"))
    assert response.status == 200
    await response.read()
    assert [orjson.loads(r.body)["messages"][0]["content"] for r in stack.state.requests] == [
        "holder",
        "next",
    ]


async def test_no_pool_cap_leaks_through(make_stack: StackFactory) -> None:
    # aiohttp's default pool holds 100 connections; with no --max-concurrency, 150 streams
    # must all be upstream at once.
    stack = await make_stack(Behavior(stall_after=1))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = stack.client.make_url(CHAT)
        responses = await asyncio.gather(
            *(session.post(url, data=body(str(i))) for i in range(150))
        )
        await stack.state.wait_until(lambda s: s.active == 150)
        assert await stack.value("vllm:num_requests_running") == 150
        for response in responses:
            response.close()
    await stack.state.wait_for_closed(150, timeout=10)
    await stack.wait_for("vllm:num_requests_running", 0)


async def test_a_slot_handed_to_a_cancelled_waiter_moves_on() -> None:
    queue = AdmissionQueue(1)
    await queue.acquire()
    second = asyncio.ensure_future(queue.acquire())
    third = asyncio.ensure_future(queue.acquire())
    await asyncio.sleep(0)  # both are now queued
    assert queue.waiting == 2
    queue.release()  # hands the slot to `second`...
    second.cancel()  # ...which is cancelled in the same tick
    await asyncio.wait_for(third, 1)
    assert second.cancelled()
    assert (queue.in_use, queue.waiting) == (1, 0)
    queue.release()
    assert queue.in_use == 0


async def test_unlimited_queue_never_waits() -> None:
    queue = AdmissionQueue(0)
    for _ in range(1000):
        await queue.acquire()
    assert (queue.in_use, queue.waiting) == (1000, 0)


async def test_a_waiter_cancelled_in_the_tick_a_slot_frees_leaves_cleanly() -> None:
    queue = AdmissionQueue(1)
    await queue.acquire()
    waiter = asyncio.ensure_future(queue.acquire())
    await asyncio.sleep(0)  # queued
    waiter.cancel()  # its client leaves...
    queue.release()  # ...in the same tick the holder finishes: the slot goes back, not to it
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (queue.in_use, queue.waiting) == (0, 0)


async def test_holder_and_waiter_leaving_together_settle_both_gauges(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=1), max_concurrency=1)

    async def raw_stream() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
        request = body("x")
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(request)).encode()
            + b"\r\n\r\n"
            + request
        )
        await writer.drain()
        return writer

    holder = await raw_stream()
    await stack.wait_for("vllm:num_requests_running", 1)
    waiter = await raw_stream()
    await stack.wait_for("vllm:num_requests_waiting", 1)
    holder.transport.abort()  # one client process dies with both its connections
    waiter.transport.abort()
    await stack.wait_for("vllm:num_requests_waiting", 0)
    await stack.wait_for("vllm:num_requests_running", 0)
    disconnects = await stack.snapshot()
    stages = {
        s["labels"]["stage"]: s["value"]
        for s in disconnects["proxy_client_disconnects_total"]["samples"]
    }
    assert stages == {"waiting": 1, "before_headers": 0, "streaming": 1}
