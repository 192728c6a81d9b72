"""The test suite's fake vLLM: the package's simulator (``metrics_proxy.simulator``), steered
per request and watched.

Tests serve it with ``aiohttp_server(make_fake_upstream())``, steer one request with a JSON
``X-Fake-Behavior`` header (fields of :class:`Behavior` replaced), and read what it saw and
how each response ended from ``app[FAKE_STATE]``. The wire format, pacing and faults are the
simulator's; here are only the test hooks: the steering header, the record of requests and
outcomes with events to await them, a raw answer to ``/v1/models`` (``models_answer``), and a
few routes no vLLM has (``/echo-headers``, ``/slow-body``, ``/tokenize``'s byte count,
``/v1/realtime`` as an echo).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from metrics_proxy.simulator.answers import json_response
from metrics_proxy.simulator.app import make_simulator
from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.state import Outcome, Simulation

__all__ = [
    "BEHAVIOR_HEADER",
    "FAKE_STATE",
    "Behavior",
    "FakeUpstreamState",
    "ReceivedRequest",
    "make_fake_upstream",
]

BEHAVIOR_HEADER = "X-Fake-Behavior"


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake received it, body complete."""

    method: str
    path: str  # including the query string
    headers: CIMultiDict[str]
    body: bytes
    raw_path: str = ""  # as sent, percent-escapes and query included


class FakeUpstreamState(Simulation):
    """What the fake has seen, and how its responses ended. Touched only on the event loop."""

    def __init__(self, behavior: Behavior | None = None, *, model: str | None = None) -> None:
        super().__init__(behavior, model=model)
        self.requests: list[ReceivedRequest] = []
        self.active = 0  # generation and /slow-body responses being served right now
        self.completed = 0  # ... written to the end
        self.closed_early = 0  # ... abandoned because the client went away
        self.resets = 0  # ... cut short by the fake itself (reset_after)
        self._changed = asyncio.Event()
        # GET /v1/models answers this (status, body) instead of the list, when set.
        self.models_answer: tuple[int, bytes] | None = None

    def behavior_for(self, request: web.Request, body: dict[str, Any]) -> Behavior:
        """The default Behavior, as this request's header overrides it."""
        raw_behavior = request.headers.get(BEHAVIOR_HEADER)
        return self.behavior.override(raw_behavior) if raw_behavior else self.behavior

    def started(self) -> None:
        self.active += 1
        self._notify()

    def ended(self, outcome: Outcome | None) -> None:
        if outcome == "completed":
            self.completed += 1
        elif outcome == "reset":
            self.resets += 1
        elif outcome == "closed_early":
            self.closed_early += 1
        self.active -= 1
        self._notify()

    def changed(self) -> None:
        self._notify()

    def _notify(self) -> None:
        # Swap in a fresh event so every current waiter wakes exactly once per change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(
        self, predicate: Callable[[FakeUpstreamState], bool], timeout: float = 5.0
    ) -> None:
        """Return once ``predicate(self)`` holds; raise ``TimeoutError`` after ``timeout``."""

        async def settled() -> None:
            while not predicate(self):
                await self._changed.wait()

        await asyncio.wait_for(settled(), timeout)

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Return the requests received so far, once there are at least ``n``."""
        await self.wait_until(lambda s: len(s.requests) >= n, timeout)
        return list(self.requests)

    async def wait_for_closed(self, n: int, timeout: float = 5.0) -> None:
        """Return once at least ``n`` responses were abandoned by their client."""
        await self.wait_until(lambda s: s.closed_early >= n, timeout)


FAKE_STATE = web.AppKey("fake_upstream_state", FakeUpstreamState)


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    body = await request.read()  # cached by aiohttp, so handlers can read it again
    state = request.app[FAKE_STATE]
    headers = CIMultiDict(request.headers)
    state.requests.append(
        ReceivedRequest(request.method, request.path_qs, headers, body, request.raw_path)
    )
    state._notify()
    if request.path == "/v1/models" and state.models_answer is not None:
        status, answer = state.models_answer
        return web.Response(status=status, body=answer, content_type="application/json")
    return await handler(request)


async def _tokenize(request: web.Request) -> web.Response:
    return json_response({"count": len(await request.read())})


async def _echo_headers(request: web.Request) -> web.Response:
    # Repeated headers are joined with ", ", their HTTP-equivalent single form; the exact
    # multidict is in FakeUpstreamState.requests.
    return json_response({str(k): ", ".join(request.headers.getall(k)) for k in request.headers})


async def _slow_body(request: web.Request) -> web.StreamResponse:
    pieces = int(request.query.get("pieces", "3"))
    delay = float(request.query.get("delay", "0.01"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    with request.app[FAKE_STATE].serving():
        await resp.prepare(request)
        for i in range(pieces):
            if i and delay:
                await asyncio.sleep(delay)
            await resp.write(f"piece{i}\n".encode())
        await resp.write_eof()
    return resp


async def _realtime(request: web.Request) -> web.WebSocketResponse:
    """vLLM's /v1/realtime stands in as an echo: every message comes back prefixed."""
    ws = web.WebSocketResponse(protocols=("realtime",))
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(b"echo:" + message.data)
    return ws


def make_fake_upstream(
    behavior: Behavior | None = None, *, model: str | None = None
) -> web.Application:
    """The fake upstream app; ``behavior`` is the default each request may override, and
    ``model`` the served model its /metrics names."""
    state = FakeUpstreamState(behavior, model=model)
    app = make_simulator(state, middlewares=[_record])
    app[FAKE_STATE] = state
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_route("*", "/echo-headers", _echo_headers)
    app.router.add_get("/slow-body", _slow_body)
    app.router.add_get("/v1/realtime", _realtime)
    return app
