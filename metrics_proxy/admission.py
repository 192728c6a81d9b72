"""The proxy's queue: at most N requests upstream at once, the rest served first-in first-out."""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(RuntimeError):
    """The queue already holds its maximum number of waiting requests."""


class QueueTimeout(TimeoutError):
    """A request waited in the queue longer than allowed."""


class AdmissionQueue:
    """A FIFO concurrency limit; ``limit`` 0 means no limit.

    A released slot is handed straight to the oldest waiter, so nobody can overtake the
    queue. A waiter that is cancelled (its client left) or times out leaves its place at
    once; if the slot had already been handed to it, the slot moves on to the next waiter.
    ``max_waiting`` bounds the queue's length and ``max_wait`` each wait (0: unbounded).
    """

    def __init__(self, limit: int, *, max_waiting: int = 0, max_wait: float = 0.0) -> None:
        if limit < 0 or max_waiting < 0 or max_wait < 0:
            raise ValueError("limit, max_waiting and max_wait must be >= 0")
        self.limit = limit
        self.max_waiting = max_waiting
        self.max_wait = max_wait or None
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it."""
        if self.limit == 0 or (self.in_use < self.limit and not self._waiters):
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot; raises QueueFull or QueueTimeout when a bound is hit."""
        if self.try_acquire():
            return
        if self.max_waiting and len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"{len(self._waiters)} requests are already waiting")
        try:
            async with asyncio.timeout(self.max_wait):
                await self._wait_for_slot()
        except TimeoutError:
            raise QueueTimeout(f"no slot within {self.max_wait:g} s") from None

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same tick it was cancelled: pass it on
            elif waiter in self._waiters:
                # (A release in the same tick may already have popped and skipped it.)
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_use stays the same
                return
        self.in_use -= 1
