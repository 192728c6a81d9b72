"""Whether the upstream answers: a cheap GET of its /health, cached, one check at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp


class UpstreamProbe:
    """Asks the upstream's ``/health`` (vLLM's health route; never a completion) at most once
    per ``ttl`` seconds, however many probes arrive: concurrent callers share one check.
    Any answer below 500 counts as "answers" (an upstream without /health says 404)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_url: str,
        *,
        ttl: float = 2.0,
        timeout: float = 2.0,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._url = upstream_url + "/health"
        self._ttl = ttl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._checked_at: float | None = None
        self._ok = False
        self._running: asyncio.Task[bool] | None = None

    async def upstream_ok(self) -> bool:
        checked = self._checked_at
        if checked is not None and self._clock() - checked < self._ttl:
            return self._ok
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
        # shield: a probe that gives up must not cancel the check the others await.
        return await asyncio.shield(self._running)

    async def _check(self) -> bool:
        try:
            async with self._session.get(
                self._url, timeout=self._timeout, allow_redirects=False
            ) as response:
                ok = response.status < 500
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        finally:
            self._running = None
        self._ok = ok
        self._checked_at = self._clock()
        return ok
