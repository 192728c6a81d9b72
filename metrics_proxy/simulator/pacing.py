"""The simulator's clock and faults: a stream's token steps at the Behavior's pace, with the
connection reset or left silent where it asks.

Disconnect detection: aiohttp >= 3.9 no longer cancels a handler when its client goes away,
unless the server runs with ``handler_cancellation=True``. Every runner of the simulator
(the command, the proxy's --simulate, the tests' ``TestServer``) turns it on, so a client
leaving cancels the handler at once and the ``CancelledError`` is the signal. Under a runner
without it, a write to the closed transport raises ``ConnectionResetError``, and a handler
that is hanging on purpose (the stall modes) watches the transport instead, because aiohttp
3.14 offers no public "client disconnected" future to await.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import NoReturn

from aiohttp import web

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.state import Reset

_DISCONNECT_POLL = 0.02  # seconds; only used without handler_cancellation (see module doc)


async def until_disconnected(request: web.Request) -> NoReturn:
    """Hang until the client leaves (a Behavior's stall)."""
    # Under handler_cancellation the sleep is cancelled the moment the client leaves. Without
    # it, polling the transport is the fallback: aiohttp 3.14 has no disconnect event to await.
    transport = request.transport  # a closed transport stays is_closing()
    while transport is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_DISCONNECT_POLL)
    raise ConnectionResetError("client went away")


def reset(request: web.Request) -> NoReturn:
    """Abort the connection on purpose (a Behavior's reset_after)."""
    if request.transport is not None:
        request.transport.abort()
    raise Reset


async def paced_steps(request: web.Request, b: Behavior) -> AsyncIterator[int]:
    """Steps 0..completion_tokens of a stream (the last carries no token and ends it), each
    after the Behavior's faults for it and, before a token, its pacing (ttft, then itl)."""
    for i in range(b.completion_tokens + 1):
        if b.reset_after == i and request.transport is not None:
            reset(request)
        if b.stall_after == i:
            await until_disconnected(request)
        if i < b.completion_tokens and (delay := b.ttft if i == 0 else b.itl):
            await asyncio.sleep(delay)
        yield i


async def engine_time(b: Behavior) -> None:
    """The time a whole answer takes the engine before it is sent: its tokens' pacing."""
    for i in range(b.completion_tokens):
        if delay := b.ttft if i == 0 else b.itl:
            await asyncio.sleep(delay)
