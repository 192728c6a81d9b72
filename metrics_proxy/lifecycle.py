"""The server's life: requests in flight, and draining once a shutdown has begun."""

from __future__ import annotations

import asyncio


class Lifecycle:
    """Counts the requests being served and lets shutdown wait until none are left."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()
