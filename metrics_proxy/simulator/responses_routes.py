"""The simulator's Responses API (/v1/responses): answers, streams, and vLLM's store with
its background responses, retrieval and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from metrics_proxy.simulator.answers import (
    JSON,
    bad_request,
    json_response,
    read_request,
    send,
)
from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.openai_shapes import error_body
from metrics_proxy.simulator.pacing import engine_time, reset, until_disconnected
from metrics_proxy.simulator.request_fields import vllm_bool
from metrics_proxy.simulator.responses_shapes import (
    DELTA,
    event_encoder,
    is_delta,
    response,
    response_events,
)
from metrics_proxy.simulator.state import SIMULATION, Simulation, StoredResponse


async def _stream_response(
    request: web.Request, resp: web.StreamResponse, events: AsyncIterator[bytes], b: Behavior
) -> None:
    """Write SSE events as they come; reset_after/stall_after count the deltas written."""
    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    await resp.prepare(request)
    deltas = 0
    async for event in events:
        if is_delta(event):
            if b.reset_after == deltas and request.transport is not None:
                reset(request)
            if b.stall_after == deltas:
                await until_disconnected(request)
            deltas += 1
        step = b.split or len(event)
        for start in range(0, len(event), step):
            await resp.write(event[start : start + step])
    await resp.write_eof()


async def _encoded(resp_id: str, fields: dict[str, Any], b: Behavior) -> AsyncIterator[bytes]:
    """The response's events, encoded, each delta at the Behavior's pace."""
    encode = event_encoder(b)
    deltas = 0
    for number, event in enumerate(response_events(resp_id, fields, b)):
        if event["type"] == DELTA:
            if delay := b.ttft if deltas == 0 else b.itl:
                await asyncio.sleep(delay)
            deltas += 1
        yield encode(event, number)


def _has_more(stored: StoredResponse, index: int) -> bool:
    return len(stored.events) > index or stored.finished


async def _replay(stored: StoredResponse, after: int) -> AsyncIterator[bytes]:
    """A background stream's events from index ``after + 1``, waiting for more until it is
    over."""
    index = after + 1
    while True:
        while index < len(stored.events):
            yield stored.events[index]
            index += 1
        if stored.finished:
            return
        async with asyncio.timeout(60):
            while not _has_more(stored, index):
                await stored.moved.wait()


async def _run_in_background(
    simulation: Simulation, stored: StoredResponse, fields: dict[str, Any], b: Behavior
) -> None:
    """The work of a background response: its events (kept for a background stream), then
    its final object in the store, as vLLM's background task does."""
    resp_id = stored.body["id"]
    try:
        stored.body = {**stored.body, "status": "in_progress"}
        async for event in _encoded(resp_id, fields, b):
            if stored.stream:
                stored.events.append(event)
                stored.move_on()
                simulation.changed()
        stored.body = response(resp_id, fields, "", b)
    finally:
        stored.finished = True
        stored.move_on()
        simulation.changed()


def _response_request(fields: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(stream, background, store) as vLLM reads them; ValueError where it refuses."""
    stream, background = vllm_bool(fields, "stream"), vllm_bool(fields, "background")
    store = "store" not in fields or vllm_bool(fields, "store")
    if background and not store:
        raise ValueError("background can only be used when `store` is true")
    return stream, background, store


async def create_response(request: web.Request) -> web.StreamResponse:
    simulation = request.app[SIMULATION]
    try:
        b, fields = await read_request(request)
        stream, background, store = _response_request(fields)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    request_id = fields.get("request_id")
    resp_id = request_id if isinstance(request_id, str) else simulation.next_response_id()
    resp = web.StreamResponse()
    with simulation.serving():
        if b.stall_before_headers:
            await until_disconnected(request)
        if b.status != 200:
            await send(request, resp, b.status, error_body(b.status, b.error_message), JSON)
        elif background:
            await _start_background(request, resp, resp_id, fields, b, stream)
        elif stream:
            await _stream_response(request, resp, _encoded(resp_id, fields, b), b)
        else:
            await _answer_response(request, resp, resp_id, fields, b, store)
    return resp


async def _answer_response(
    request: web.Request, resp: web.StreamResponse, resp_id: str, fields: dict[str, Any],
    b: Behavior, store: bool,
) -> None:  # fmt: skip
    if b.finish_reason == "error":  # vLLM's GenerationError
        await send(request, resp, 500, error_body(500, "Internal server error"), JSON)
        return
    await engine_time(b)  # the engine works before the answer
    body = response(resp_id, fields, "", b)
    if store:
        request.app[SIMULATION].responses[resp_id] = StoredResponse(body, finished=True)
    out = b.raw_body if b.raw_body is not None else orjson.dumps(body)
    await send(request, resp, 200, out, b.content_type or JSON)


async def _start_background(
    request: web.Request, resp: web.StreamResponse, resp_id: str, fields: dict[str, Any],
    b: Behavior, stream: bool,
) -> None:  # fmt: skip
    """``queued`` at once while a task does the work; a background stream is the task's events."""
    simulation = request.app[SIMULATION]
    stored = StoredResponse(response(resp_id, fields, "queued"), stream=stream)
    simulation.responses[resp_id] = stored
    stored.task = asyncio.create_task(_run_in_background(simulation, stored, fields, b))
    if stream:
        await _stream_response(request, resp, _replay(stored, -1), b)
    else:
        await send(request, resp, 200, orjson.dumps(stored.body), JSON)


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    simulation = request.app[SIMULATION]
    resp_id = request.match_info["response_id"]
    stored = simulation.responses.get(resp_id)
    if stored is None:
        message = f"Response with id '{resp_id}' not found."
        return web.Response(status=404, body=error_body(404, message), content_type=JSON)
    if not vllm_bool(dict(request.query), "stream"):
        return json_response(stored.body)
    if not stored.stream:  # vLLM keeps the events of background streams only
        message = f"Unknown response_id: {resp_id}"
        return web.Response(status=400, body=error_body(400, message), content_type=JSON)
    after = int(request.query.get("starting_after", "-1"))
    resp = web.StreamResponse()
    with simulation.serving():
        await _stream_response(request, resp, _replay(stored, after), simulation.behavior)
    return resp


async def cancel_response(request: web.Request) -> web.Response:
    stored = request.app[SIMULATION].responses.get(request.match_info["response_id"])
    if stored is None:
        return web.Response(status=404, body=error_body(404, "not found"), content_type=JSON)
    if stored.body["status"] not in ("queued", "in_progress"):
        message = "Cannot cancel a synchronous response."
        return web.Response(status=400, body=error_body(400, message), content_type=JSON)
    stored.body = {**stored.body, "status": "cancelled"}
    if stored.task is not None:
        stored.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stored.task
    return json_response(stored.body)


async def stop_background(app: web.Application) -> None:
    """On cleanup: the background responses still running end."""
    for stored in app[SIMULATION].responses.values():
        if stored.task is not None:
            stored.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stored.task
