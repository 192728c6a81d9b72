"""The proxy's queue: at most N requests upstream at once, the rest served first-in first-out."""

from __future__ import annotations

import asyncio
from collections import deque


class AdmissionQueue:
    """A FIFO concurrency limit; ``limit`` 0 means no limit.

    A released slot is handed straight to the oldest waiter, so nobody can overtake the
    queue. A waiter that is cancelled (its client left) leaves its place at once; if the
    slot had already been handed to it, the slot moves on to the next waiter.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
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
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot in the same tick it was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; in_use stays the same
                return
        self.in_use -= 1
