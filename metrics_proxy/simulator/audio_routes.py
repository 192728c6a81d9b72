"""The simulator's audio routes: a multipart form in (the audio file and small fields),
chat-like chunks or a whole answer out."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader

from metrics_proxy.simulator.answers import JSON, bad_request, event_stream, send, send_error
from metrics_proxy.simulator.audio_shapes import audio_body, audio_flags, audio_steps
from metrics_proxy.simulator.pacing import until_disconnected
from metrics_proxy.simulator.state import SIMULATION


async def _audio_form(request: web.Request) -> dict[str, Any]:
    """The form as vLLM's FastAPI hands it over: the last of a repeated field, a file part
    as its bytes, an empty value as no value."""
    if request.content_type != "multipart/form-data":
        raise ValueError("file: Field required")
    body = await request.read()  # read whole (aiohttp keeps it): parsed again from the bytes
    loop = asyncio.get_running_loop()
    # A reader of its own, large enough never to ask for flow control.
    stream = StreamReader(BaseProtocol(loop), len(body) + 1, loop=loop)
    stream.feed_data(body)
    stream.feed_eof()
    reader = MultipartReader(request.headers, stream)
    fields: dict[str, Any] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            raise ValueError('The Content-Disposition header field "name" must be provided.')
        value = bytes(await part.read())
        if part.filename is not None:
            fields[part.name] = value
        elif value:
            fields[part.name] = value.decode()
        else:
            fields.pop(part.name, None)
    if not isinstance(fields.get("file"), bytes):
        raise ValueError("file: Expected an UploadFile")
    return fields


async def audio(request: web.Request) -> web.StreamResponse:
    """vLLM's audio routes; ``raw_body`` is the answer's body whether it streams or not."""
    simulation = request.app[SIMULATION]
    try:
        fields = await _audio_form(request)
        b = simulation.behavior_for(request, fields)
        stream = audio_flags(fields)[0]
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    fields["model"] = fields.get("model") or simulation.model
    resp = web.StreamResponse()
    with simulation.serving():
        if b.stall_before_headers:
            await until_disconnected(request)
        if b.status != 200:
            await send_error(request, resp, b)
        elif b.raw_body is not None:
            ctype = b.content_type or ("text/event-stream" if stream else JSON)
            await send(request, resp, 200, b.raw_body, ctype)
        elif stream:
            steps = audio_steps(request.path, fields, b)
            await event_stream(request, resp, b, steps, cache_headers=False)
        else:
            await send(request, resp, 200, audio_body(request.path, b), b.content_type or JSON)
    return resp
