"""The simulator's Anthropic Messages API (/v1/messages, /v1/messages/count_tokens)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from metrics_proxy.simulator.answers import JSON, json_response, read_request, send, write_frame
from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import named_frame
from metrics_proxy.simulator.messages_shapes import (
    anthropic_error,
    block_delta,
    block_start,
    message_body,
    message_delta,
    message_start,
    stream_error,
)
from metrics_proxy.simulator.pacing import paced_steps, until_disconnected
from metrics_proxy.simulator.request_fields import vllm_bool
from metrics_proxy.simulator.state import SIMULATION


async def _message_stream(
    request: web.Request, resp: web.StreamResponse, model: str, b: Behavior
) -> None:
    async def event(data: dict[str, Any]) -> None:
        await write_frame(resp, named_frame(data["type"], orjson.dumps(data), b), b)

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    await resp.prepare(request)
    await event(message_start(model, b))
    async for i in paced_steps(request, b):
        if b.error_after == i:  # vLLM's converter ends the stream with this on any failure
            await event(stream_error())
            await resp.write_eof()
            return
        if i == b.completion_tokens:
            break
        if i == 0:
            await event(block_start())
        await event(block_delta(b.token(i)))
    if b.completion_tokens:
        await event({"type": "content_block_stop", "index": 0})
    await event(message_delta(b))
    if b.done:
        await event({"type": "message_stop"})
    await resp.write_eof()


async def messages(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await read_request(request)
        stream = vllm_bool(body, "stream")
    except (ValueError, TypeError) as exc:
        return web.Response(status=400, body=anthropic_error(400, str(exc)), content_type=JSON)
    model, ctype = str(body["model"]), b.content_type or JSON
    resp = web.StreamResponse()
    with request.app[SIMULATION].serving():
        if b.stall_before_headers:
            await until_disconnected(request)
        if b.status != 200:
            await send(request, resp, b.status, anthropic_error(b.status, b.error_message), ctype)
        elif stream:
            await _message_stream(request, resp, model, b)
        else:
            if b.answer_delay:
                await asyncio.sleep(b.answer_delay)
            out = b.raw_body if b.raw_body is not None else message_body(model, b)
            await send(request, resp, 200, out, ctype)
    return resp


async def count_tokens(request: web.Request) -> web.Response:
    try:
        b, _ = await read_request(request)
    except (ValueError, TypeError) as exc:
        return web.Response(status=400, body=anthropic_error(400, str(exc)), content_type=JSON)
    tokens = b.prompt_tokens
    return json_response(
        {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
    )
