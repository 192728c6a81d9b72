"""The queue's per-tenant cap: the pure choice of who goes next, and the queue that applies it
(the same limits and cancellations as the FIFO queue of test_proxy_queue.py)."""

from __future__ import annotations

import asyncio

import pytest

from metrics_proxy.admission import (
    AdmissionQueue,
    QueueFull,
    QueueTimeout,
    next_in_line,
    tenant_cap,
)


@pytest.mark.parametrize(
    ("limit", "share", "cap"),
    [(10, 1.0, 0), (10, 0.5, 5), (10, 0.3, 3), (4, 0.3, 1), (3, 0.5, 1), (2, 0.01, 1), (1, 0.5, 0)],
)
def test_a_tenant_holds_at_most_its_share_rounded_down_but_one(
    limit: int, share: float, cap: int
) -> None:
    assert tenant_cap(limit, share) == cap


def test_the_oldest_waiter_under_its_cap_goes_first() -> None:
    assert next_in_line(["a", "a", "b", "a", "c"], {"a": 2}, 2) == 2
    assert next_in_line(["a", "b"], {"a": 1, "b": 1}, 2) == 0  # both under: plain FIFO
    assert next_in_line(["a", "a", "b"], {"a": 2, "b": 2}, 2) == 0  # all capped: no idle slot
    assert next_in_line([], {}, 1) == 0


async def queued(queue: AdmissionQueue, tenant: str) -> asyncio.Future[None]:
    task = asyncio.ensure_future(queue.acquire(tenant))
    await asyncio.sleep(0)  # in line
    return task


async def test_a_flooding_tenant_lets_a_light_one_through() -> None:
    queue = AdmissionQueue(2, tenant_cap=1)
    await queue.acquire("flood")
    await queue.acquire("flood")  # nobody else waits: it may take both slots
    floods = [await queued(queue, "flood") for _ in range(5)]
    light = await queued(queue, "light")
    queue.release("flood")
    await asyncio.wait_for(light, 1)  # ahead of five older requests of a tenant at its cap
    assert queue.held == {"flood": 1, "light": 1}
    queue.release("light")  # nobody else waits: the flood gets it back
    await asyncio.wait_for(floods[0], 1)
    assert not any(f.done() for f in floods[1:])  # FIFO within the tenant
    assert queue.held == {"flood": 2}
    for task in floods[1:]:
        task.cancel()
    await asyncio.gather(*floods[1:], return_exceptions=True)
    queue.release("flood")
    queue.release("flood")
    assert (queue.in_use, queue.waiting, queue.held) == (0, 0, {})


async def test_a_capped_waiter_cancelled_as_its_slot_comes_passes_it_on() -> None:
    queue = AdmissionQueue(2, tenant_cap=1)
    await queue.acquire("a")
    await queue.acquire("b")
    first = await queued(queue, "c")
    second = await queued(queue, "a")
    queue.release("b")  # hands the slot to c...
    first.cancel()  # ...cancelled in the same tick: the slot goes on to a, now under no cap
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert (queue.in_use, queue.waiting, queue.held) == (2, 0, {"a": 2})
    queue.release("a")
    queue.release("a")
    assert (queue.in_use, queue.held) == (0, {})


async def test_the_queue_limits_hold_with_a_cap() -> None:
    queue = AdmissionQueue(1, max_waiting=1, max_wait=0.05, tenant_cap=1)
    await queue.acquire("a")
    waiter = await queued(queue, "b")
    with pytest.raises(QueueFull):
        await queue.acquire("c")
    with pytest.raises(QueueTimeout):
        await waiter
    assert (queue.in_use, queue.waiting, queue.held) == (1, 0, {"a": 1})
    queue.release("a")
    assert (queue.in_use, queue.held) == (0, {})


def test_no_cap_without_a_limit() -> None:
    assert AdmissionQueue(0, tenant_cap=3).tenant_cap == 0
