"""Sending a request once more when the pooled connection it went out on was being closed.

An upstream closes an idle keep-alive connection whenever its own timer says so; a request the
proxy sends on that connection at the same moment fails before any answer. Keeping the pool's
idle time below the upstream's (--upstream-keepalive-timeout) makes this rare, not impossible.
aiohttp sends only idempotent methods again, never a completion's POST; the proxy does, once,
and only when that is safe: the body is bytes in hand, the connection had carried a request
before (a new one failing is the upstream failing), not a byte of an answer came, and the
close came right after the request went out. An upstream works for minutes before it answers
a completion: a close later than that race may end a request it was running, which must not
run twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace

# Whether the connection a request went out on came from the pool, so had carried a request
# before: set in the task that asked for it (aiohttp connects in the requesting task), read
# there once the request failed.
_reused: ContextVar[bool] = ContextVar("metrics_proxy_upstream_connection_reused", default=False)


class ReuseNotingConnector(aiohttp.TCPConnector):
    """A TCPConnector that notes when the connection it hands out is a new one.

    aiohttp hands out a pooled connection unless it opens one, so only the (rare) opening is
    noted: the pooled path, taken by nearly every request, costs nothing more."""

    async def _create_connection(  # aiohttp's signature, its names included
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109
    ) -> ResponseHandler:
        _reused.set(False)
        return await super()._create_connection(req, traces, timeout)


OpenOnce = Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]]

# How soon after sending a close can only be the keep-alive race: the upstream closed the idle
# connection as the request was on its way, before it could have read it, let alone run it.
RACE_WINDOW = 0.1


class ResendIfClosedUnanswered:
    """The response of `open_once()`, opened a second time if the first went out on a reused
    connection that closed before any answer. Needs the session's ReuseNotingConnector."""

    __slots__ = ("_open_once", "_opened")

    def __init__(self, open_once: OpenOnce) -> None:
        self._open_once = open_once
        self._opened: AbstractAsyncContextManager[aiohttp.ClientResponse] | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        _reused.set(True)  # until the connector says it opened a new connection
        opened = self._open_once()
        sent = time.monotonic()
        try:
            response = await opened.__aenter__()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if time.monotonic() - sent > RACE_WINDOW or not _closed_unanswered(exc):
                raise
            opened = self._open_once()
            response = await opened.__aenter__()
        self._opened = opened
        return response

    # A plain method handing back the opened one's coroutine: no frame of its own to await.
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Coroutine[Any, Any, bool | None]:
        assert self._opened is not None
        return self._opened.__aexit__(exc_type, exc, traceback)


def _closed_unanswered(exc: aiohttp.ClientOSError | aiohttp.ServerDisconnectedError) -> bool:
    if not _reused.get() or isinstance(exc, aiohttp.ClientConnectorError):
        return False
    # With part of a response head received, aiohttp's parser hands that over as the message
    # (its C parser does; the pure-Python one, AIOHTTP_NO_EXTENSIONS, says nothing). A reset
    # tells nothing either: taken as no answer, as a head cut short takes an upstream dying
    # in the middle of one write.
    return not isinstance(exc, aiohttp.ServerDisconnectedError) or isinstance(exc.message, str)
