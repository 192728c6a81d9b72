"""The simulator's chat and text completions (/v1/chat/completions, /v1/completions), and
the routes every vLLM answers: /v1/models, /health."""

from __future__ import annotations

import asyncio

from aiohttp import web

from metrics_proxy.simulator.answers import (
    JSON,
    bad_request,
    event_stream,
    json_response,
    read_request,
    send,
    send_error,
)
from metrics_proxy.simulator.metrics_shapes import METRICS_CONTENT_TYPE, exposition
from metrics_proxy.simulator.openai_shapes import completion_body, completion_steps
from metrics_proxy.simulator.pacing import until_disconnected
from metrics_proxy.simulator.request_fields import usage_options, vllm_bool
from metrics_proxy.simulator.state import SIMULATION

INVOKED_CHAT = web.RequestKey("simulator_invoked_chat", bool)  # /invocations got a chat body


def is_chat(request: web.Request) -> bool:
    return request.path == "/v1/chat/completions" or request.get(INVOKED_CHAT, False)


async def generate(request: web.Request) -> web.StreamResponse:
    """A chat or text completion, streamed or whole, as the Behavior says."""
    try:
        b, body = await read_request(request)
        stream = vllm_bool(body, "stream")
        usage_options(body)  # validated whether streaming or not, as pydantic does
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    chat, model = is_chat(request), str(body["model"])
    n, ctype = int(body.get("n") or 1), b.content_type or JSON
    resp = web.StreamResponse()
    with request.app[SIMULATION].serving():
        if b.stall_before_headers:
            await until_disconnected(request)
        if b.status != 200:
            await send_error(request, resp, b)
        elif stream:
            await event_stream(request, resp, b, completion_steps(chat, model, body, b, n))
        else:
            if b.answer_delay:
                await asyncio.sleep(b.answer_delay)
            out = b.raw_body if b.raw_body is not None else completion_body(chat, model, n, b)
            await send(request, resp, 200, out, ctype)
    return resp  # after an early close aiohttp finds the connection gone and moves on


async def models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": request.app[SIMULATION].listed_models()})


async def health(request: web.Request) -> web.Response:
    return web.Response()


async def engine_metrics(request: web.Request) -> web.Response:
    """vLLM's /metrics: the simulated engine's load in vLLM's families."""
    simulation = request.app[SIMULATION]
    body = exposition(simulation.model, simulation.load())
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
