"""Writing the simulator's answers: whole bodies (in pieces when the Behavior asks), event
streams at its pace, and the 400 a request vLLM would refuse gets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import Steps, data_frame
from metrics_proxy.simulator.openai_shapes import error_body
from metrics_proxy.simulator.pacing import paced_steps, reset, until_disconnected
from metrics_proxy.simulator.state import SIMULATION

JSON = "application/json"


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type=JSON)


def bad_request(exc: Exception) -> web.Response:
    return web.Response(status=400, body=error_body(400, str(exc)), content_type=JSON)


async def read_request(request: web.Request) -> tuple[Behavior, dict[str, Any]]:
    """The request's JSON object body and the Behavior it gets; ValueError for a bad one.
    A body naming no model names the served one, as vLLM answers."""
    body = orjson.loads(await request.read())
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    simulation = request.app[SIMULATION]
    b = simulation.behavior_for(request, body)
    if not body.get("model"):
        body["model"] = simulation.model
    return b, body


async def send(
    request: web.Request, resp: web.StreamResponse, status: int, body: bytes, ctype: str
) -> None:
    # Written here rather than returned as a web.Response, so `completed` means sent.
    resp.set_status(status)
    resp.headers["Content-Type"] = ctype
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()


async def send_error(request: web.Request, resp: web.StreamResponse, b: Behavior) -> None:
    """The Behavior's ``status`` with an OpenAI-shape error."""
    body = error_body(b.status, b.error_message)
    await send(request, resp, b.status, body, b.content_type or JSON)


async def send_pieces(
    request: web.Request, resp: web.StreamResponse, body: bytes, b: Behavior
) -> None:
    """A whole body in ``split``-byte pieces; ``reset_after`` / ``stall_after`` count them."""
    resp.headers["Content-Type"] = b.content_type or JSON
    resp.content_length = len(body)
    await resp.prepare(request)
    step = b.split or len(body) or 1
    for count, start in enumerate(range(0, len(body), step)):
        if b.reset_after == count and request.transport is not None:
            reset(request)
        if b.stall_after == count:
            await until_disconnected(request)
        await resp.write(body[start : start + step])
    await resp.write_eof()


async def write_frame(resp: web.StreamResponse, frame: bytes, b: Behavior) -> None:
    """One event, in ``split``-byte writes when the Behavior asks (events cut across HTTP
    chunks)."""
    step = b.split or len(frame)
    for start in range(0, len(frame), step):
        await resp.write(frame[start : start + step])


async def event_stream(
    request: web.Request,
    resp: web.StreamResponse,
    b: Behavior,
    steps: Steps,
    *,
    cache_headers: bool = True,
) -> None:
    """An SSE stream steered by ``b``: the first events, those of each token step (``ttft``,
    ``itl``, ``reset_after``, ``stall_after``), the last ones, then ``[DONE]``."""
    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    if cache_headers:
        resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    for frame in steps.first:
        await write_frame(resp, frame, b)
    async for i in paced_steps(request, b):
        if i == b.completion_tokens:
            break
        for frame in steps.step(i):
            await write_frame(resp, frame, b)
    for frame in steps.last:
        await write_frame(resp, frame, b)
    if b.done:
        await write_frame(resp, data_frame(b"[DONE]", b), b)
    await resp.write_eof()


async def json_answer(
    request: web.Request, b: Behavior, make_body: Callable[[], bytes]
) -> web.StreamResponse:
    """One JSON answer, sent as vLLM sends it once the request is done (after ``ttft``)."""
    resp = web.StreamResponse()
    with request.app[SIMULATION].serving():
        if b.stall_before_headers:
            await until_disconnected(request)
        if b.ttft:
            await asyncio.sleep(b.ttft)
        if b.status != 200:
            await send_error(request, resp, b)
        else:
            body = b.raw_body if b.raw_body is not None else make_body()
            await send_pieces(request, resp, body, b)
    return resp
