"""The proxy's queue: at most N requests upstream at once, the rest served first-in first-out
(or, with a per-tenant cap, first-in first-out among the tenants under their cap)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping

# A waiter: the future its slot is handed through, and its tenant ("" with no attribution).
_Waiter = tuple[asyncio.Future[None], str]


class QueueFull(RuntimeError):
    """The queue already holds its maximum number of waiting requests."""


class QueueTimeout(TimeoutError):
    """A request waited in the queue longer than allowed."""


def tenant_cap(limit: int, share: float) -> int:
    """The most of ``limit`` slots one tenant may hold while others wait: ``share`` of them,
    rounded down (a tenant never holds more than its share), but at least one; 0 (no cap)
    when that is all of them."""
    cap = max(1, int(limit * share + 1e-9))  # 0.3 * 10 is 2.9999999999999996
    return 0 if cap >= limit else cap


def next_in_line(tenants: Iterable[str], held: Mapping[str, int], cap: int) -> int:
    """Which waiter (by its place in line) gets a free slot: the first whose tenant holds
    fewer than ``cap`` slots, or, when every waiting tenant is at its cap, the first (a slot
    never idles while anyone waits). First-in first-out within each tenant."""
    for place, tenant in enumerate(tenants):
        if held.get(tenant, 0) < cap:
            return place
    return 0


class AdmissionQueue:
    """A FIFO concurrency limit; ``limit`` 0 means no limit.

    A released slot is handed straight to the oldest waiter, so nobody can overtake the
    queue. A waiter that is cancelled (its client left) or times out leaves its place at
    once; if the slot had already been handed to it, the slot moves on to the next waiter.
    ``max_waiting`` bounds the queue's length and ``max_wait`` each wait (0: unbounded).

    With a ``tenant_cap`` (see :func:`tenant_cap`), the oldest waiter of a tenant holding
    fewer than ``tenant_cap`` slots goes first: a tenant that floods the queue cannot keep
    the others waiting behind it, and still gets every slot nobody else waits for.
    """

    def __init__(
        self, limit: int, *, max_waiting: int = 0, max_wait: float = 0.0, tenant_cap: int = 0
    ) -> None:
        if limit < 0 or max_waiting < 0 or max_wait < 0 or tenant_cap < 0:
            raise ValueError("limit, max_waiting, max_wait and tenant_cap must be >= 0")
        self.limit = limit
        self.max_waiting = max_waiting
        self.max_wait = max_wait or None
        self.tenant_cap = tenant_cap if limit else 0
        self.in_use = 0
        # Slots each tenant holds; kept only with a cap, and only for tenants holding one.
        self.held: dict[str, int] = {}
        self._waiters: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, tenant: str = "") -> bool:
        """Take a slot for ``tenant`` if one is free and nobody is waiting for it."""
        if self.limit == 0 or (self.in_use < self.limit and not self._waiters):
            self.in_use += 1
            if self.tenant_cap:
                self.held[tenant] = self.held.get(tenant, 0) + 1
            return True
        return False

    async def acquire(self, tenant: str = "") -> None:
        """Wait for a slot for ``tenant``; raises QueueFull or QueueTimeout when a bound is
        hit. Whoever acquired must :meth:`release` with the same ``tenant``."""
        if self.try_acquire(tenant):
            return
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"{len(self._waiters)} requests are already waiting")
        try:
            async with asyncio.timeout(self.max_wait):
                await self._wait_for_slot(tenant)
        except TimeoutError:
            raise QueueTimeout(f"no slot within {self.max_wait:g} s") from None

    async def _wait_for_slot(self, tenant: str) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, tenant)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Handed a slot in the same tick it was cancelled: pass it on.
                self.release(tenant)
            elif entry in self._waiters:
                # (A release in the same tick may already have popped and skipped it.)
                self._waiters.remove(entry)
            raise

    def release(self, tenant: str = "") -> None:
        """Give back ``tenant``'s slot: to the next in line, or free."""
        if self.tenant_cap:
            self._let_go(tenant)
        waiter = self._next_waiter()
        if waiter is None:
            self.in_use -= 1
            return
        future, next_tenant = waiter
        if self.tenant_cap:
            self.held[next_tenant] = self.held.get(next_tenant, 0) + 1
        future.set_result(None)  # the slot changes hands; in_use stays the same

    def _let_go(self, tenant: str) -> None:
        left = self.held[tenant] - 1
        if left:
            self.held[tenant] = left
        else:
            del self.held[tenant]  # only tenants holding slots are kept: memory stays bounded

    def _next_waiter(self) -> _Waiter | None:
        """Take the next waiter out of the line; None when nobody waits. A waiter cancelled
        in this tick (still in line until its task runs) is dropped on the way."""
        waiters = self._waiters
        while waiters:
            if not self.tenant_cap:
                waiter = waiters.popleft()
            else:
                # Lazy: the scan stops at the first tenant under its cap.
                place = next_in_line((tenant for _, tenant in waiters), self.held, self.tenant_cap)
                waiter = waiters[place]
                del waiters[place]
            if not waiter[0].done():
                return waiter
        return None
