"""The server's life: requests in flight, draining once a shutdown has begun, and ending the
streams still open when the drain is over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from metrics_proxy.errors import error_event

log = logging.getLogger("metrics_proxy")


class EndedByShutdown(Exception):
    """Raised where a stream reads its upstream once the shutdown has ended it. Neither an
    upstream failure nor a client that left: no handler of those may catch it."""


def shutdown_event(name: str | None) -> bytes:
    """The error event that ends a stream the shutdown ended: the same event an upstream
    failure ends a stream with (``name``: the API's name for error events), so that a client
    reads an error rather than a stream that merely stops."""
    return error_event(
        "The proxy is shutting down: the stream was ended before it finished",
        "overloaded_error",
        503,
        name,
    )


class Endable(Protocol):
    """A stream being relayed, as the lifecycle ends it: its next read raises ``exc``."""

    def set_exception(self, exc: BaseException) -> None: ...


class Lifecycle:
    """Counts the requests being served, lets shutdown wait until none are left, and ends
    the streams still being relayed when it will wait no more."""

    def __init__(self) -> None:
        self.draining = False
        # The drain is over (grace period, or a second Ctrl-C): what is still in flight is
        # ended by the server, which is no client disconnect.
        self.ending = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._streams: set[Endable] = set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @contextmanager
    def relaying(self, source: Endable) -> Iterator[None]:
        """While a stream is copied from ``source``: ending the streams makes the copy's next
        read raise EndedByShutdown, so the stream stops between two whole reads (never
        inside a client write) and its handler ends it as it ends a failed one."""
        self._streams.add(source)
        try:
            if self.ending:  # its headers came after the end: it ends at once
                source.set_exception(EndedByShutdown())
            yield
        finally:
            self._streams.discard(source)

    def end_streams(self) -> None:
        """Ending starts: every stream still relayed ends now."""
        self.ending = True
        for source in self._streams:
            source.set_exception(EndedByShutdown())


class StopSignals:
    """What the signals asked for. SIGTERM drains (a second one changes nothing); Ctrl-C
    (SIGINT) drains too, and once draining, whatever began it, stops the drain now."""

    def __init__(self, drain: asyncio.Event) -> None:
        self.drain = drain
        self.now = asyncio.Event()
        self.by_hand = False  # a Ctrl-C began the drain: say how to cut it short

    def terminate(self) -> None:
        self.drain.set()

    def interrupt(self) -> None:
        if self.drain.is_set():
            self.now.set()
        else:
            self.by_hand = True
            self.drain.set()


async def drain(lifecycle: Lifecycle, grace_period: float, signals: StopSignals) -> int:
    """Refuse new work and give what is in flight the grace period (less, on a second
    Ctrl-C); then end the streams still open with their error event (the runner's clean-up
    ends whatever else is left). Returns the exit status: 0, or 130 when a second Ctrl-C
    cut the drain short, as a shell reports a run interrupted by SIGINT."""
    lifecycle.draining = True
    if signals.by_hand:
        log.info(
            "draining: %d requests in flight get up to %g s (--shutdown-grace-period) to "
            "finish; press Ctrl-C again to stop now",
            lifecycle.in_flight,
            grace_period,
        )
    else:
        log.info("shutting down: %d requests in flight", lifecycle.in_flight)
    waits = [
        asyncio.ensure_future(lifecycle.wait_idle()),
        asyncio.ensure_future(signals.now.wait()),
    ]
    try:
        await asyncio.wait(waits, timeout=grace_period, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if lifecycle.in_flight:
        reason = "stopping now" if signals.now.is_set() else "grace period over"
        log.warning("%s: ending %d requests still in flight", reason, lifecycle.in_flight)
    lifecycle.end_streams()
    return 130 if signals.now.is_set() else 0
