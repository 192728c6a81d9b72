"""A deterministic fake vLLM/OpenAI-compatible upstream, steerable per request.

Tests serve it with ``aiohttp_server(make_fake_upstream())`` and read what it saw and how each
response ended from ``app[FAKE_STATE]``; ``python tests/support/fake_upstream.py --port 8000``
runs it standalone for ``make demo``.

Disconnect detection: aiohttp >= 3.9 no longer cancels a handler when its client goes away,
unless the server runs with ``handler_cancellation=True``. ``TestServer`` (hence the
``aiohttp_server``/``aiohttp_client`` fixtures) and ``main()`` below both turn it on, so a
client leaving cancels the handler at once and the ``CancelledError`` is the signal. Under a
runner without it, a write to the closed transport raises ``ConnectionResetError``, and a handler
that is hanging on purpose (the stall modes) watches the transport instead, because aiohttp 3.14
offers no public "client disconnected" future to await.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import orjson
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

BEHAVIOR_HEADER = "X-Fake-Behavior"
_JSON = "application/json"
CREATED = 1700000000  # a fixed timestamp keeps the output byte-for-byte deterministic
_USAGE_MODES = ("honor", "never", "always")
_DISCONNECT_POLL = 0.02  # seconds; only used without handler_cancellation (see module doc)
_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}
_ERROR_TYPES |= {422: "UnprocessableEntityError", 429: "RateLimitError"}


@dataclass(frozen=True)
class Behavior:
    """How the fake answers a generation request; see the field comments for each knob."""

    prompt_tokens: int = 7
    completion_tokens: int = 5  # generated tokens = content chunks per choice
    ttft: float = 0.0  # seconds before the first generated chunk (after headers + role chunk)
    itl: float = 0.0  # seconds between generated chunks
    finish_reason: str = "stop"
    role_chunk: bool = True  # chat: a role-only preamble chunk first, as vLLM sends
    usage: str = "honor"  # "honor" stream_options (vLLM), "never", or "always" a final usage chunk
    split: int = 0  # N > 0: write the stream in N-byte pieces (events cut across HTTP chunks)
    crlf: bool = False  # \r\n line endings in the SSE stream
    keepalive: bool = False  # a ": ping" comment before every event
    done: bool = True  # end the stream with "data: [DONE]"
    status: int = 200  # != 200: answer with this status and an OpenAI-shape error body
    reset_after: int | None = None  # stream: abort the TCP connection after N token steps
    stall_after: int | None = None  # stream: go silent after N token steps until the client leaves
    stall_before_headers: bool = False  # send nothing at all until the client leaves
    content_type: str | None = None  # override the response content type
    raw_body: bytes | None = None  # non-stream: send exactly these bytes as the body

    def __post_init__(self) -> None:
        if self.usage not in _USAGE_MODES:
            raise ValueError(f"usage must be one of {_USAGE_MODES}, got {self.usage!r}")

    def override(self, raw_json: str | bytes) -> Behavior:
        """This behavior with the fields of a JSON object (an ``X-Fake-Behavior`` value) replaced.

        >>> Behavior().override('{"completion_tokens": 2}').completion_tokens
        2
        """
        fields = orjson.loads(raw_json)
        if not isinstance(fields, dict):
            raise ValueError(f"{BEHAVIOR_HEADER} must be a JSON object, got {raw_json!r}")
        unknown = set(fields) - {f.name for f in dataclasses.fields(Behavior)}
        if unknown:
            raise ValueError(f"unknown {BEHAVIOR_HEADER} fields: {sorted(unknown)}")
        if isinstance(fields.get("raw_body"), str):  # JSON has no bytes
            fields["raw_body"] = fields["raw_body"].encode()
        return dataclasses.replace(self, **fields)


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the fake received it, body complete."""

    method: str
    path: str  # including the query string
    headers: CIMultiDict[str]
    body: bytes
    raw_path: str = ""  # as sent, percent-escapes and query included


@dataclass(eq=False)
class FakeUpstreamState:
    """What the fake has seen, and how its responses ended. Touched only on the event loop."""

    behavior: Behavior
    requests: list[ReceivedRequest] = field(default_factory=list)
    active: int = 0  # generation and /slow-body responses being served right now
    completed: int = 0  # ... written to the end
    closed_early: int = 0  # ... abandoned because the client went away
    resets: int = 0  # ... cut short by the fake itself (reset_after)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

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


class _Reset(Exception):
    """The fake aborted the connection on purpose; not a client disconnect."""


@contextlib.contextmanager
def _tracked(state: FakeUpstreamState) -> Iterator[None]:
    # A client leaving is an outcome to count, not an error for aiohttp to log.
    state.active += 1
    state._notify()
    try:
        yield
        state.completed += 1
    except _Reset:
        state.resets += 1
    except ConnectionResetError:
        state.closed_early += 1
    except asyncio.CancelledError:
        state.closed_early += 1
        raise
    finally:
        state.active -= 1
        state._notify()


async def _until_disconnected(request: web.Request) -> NoReturn:
    # Under handler_cancellation the sleep is cancelled the moment the client leaves. Without
    # it, polling the transport is the fallback: aiohttp 3.14 has no disconnect event to await.
    transport = request.transport  # a closed transport stays is_closing()
    while transport is not None and not transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(_DISCONNECT_POLL)
    raise ConnectionResetError("client went away")


# vLLM's `stream`, `include_usage` and `continuous_usage_stats` are Optional[bool] = False,
# read by pydantic v2 in lax mode: booleans, 0 and 1, these words in any ASCII case, null for
# the default; anything else is a 400.
_BOOL_WORDS = {"0": False, "off": False, "f": False, "false": False, "n": False, "no": False}
_BOOL_WORDS |= {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True}


def _vllm_bool(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.isascii() and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    raise ValueError(f"{name}: Input should be a valid boolean")


def _usage_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """stream_options' (include_usage, continuous_usage_stats), validated as vLLM does."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise ValueError("stream_options: Input should be a valid dictionary")
    return _vllm_bool(options, "include_usage"), _vllm_bool(options, "continuous_usage_stats")


def _usage(p: int, c: int) -> dict[str, int]:
    return {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}  # vLLM's order


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


def _json(obj: object) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type=_JSON)


async def _send(
    request: web.Request, resp: web.StreamResponse, status: int, body: bytes, ctype: str
) -> None:
    # Written here rather than returned as a web.Response, so `completed` means sent.
    resp.set_status(status)
    resp.headers["Content-Type"] = ctype
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body)
    await resp.write_eof()


def _envelope(chat: bool, kind: str, model: str, choices: list[Any]) -> dict[str, Any]:
    chat_id = "chatcmpl-fake" if chat else "cmpl-fake"
    return {"id": chat_id, "object": kind, "created": CREATED, "model": model, "choices": choices}


def _completion_body(chat: bool, model: str, n: int, b: Behavior) -> bytes:
    text = "".join(f"tok{i} " for i in range(b.completion_tokens))
    out = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    tail = {"logprobs": None, "finish_reason": b.finish_reason}
    choices = [{"index": j, **out, **tail} for j in range(n)]
    body = _envelope(chat, "chat.completion" if chat else "text_completion", model, choices)
    if b.usage != "never":
        body["usage"] = _usage(b.prompt_tokens, n * b.completion_tokens)
    return orjson.dumps(body)


async def _stream(
    request: web.Request, resp: web.StreamResponse, body: dict[str, Any], b: Behavior, n: int
) -> None:
    chat, model = request.path == "/v1/chat/completions", str(body.get("model") or "fake-model")
    include_usage, continuous_usage = _usage_options(body)
    # vLLM only honours continuous_usage_stats together with include_usage.
    with_usage = b.usage == "always" or (b.usage == "honor" and include_usage)
    continuous = with_usage and continuous_usage
    eol = b"\r\n" if b.crlf else b"\n"

    async def event(data: bytes) -> None:
        out = (b": ping" + eol + eol if b.keepalive else b"") + b"data: " + data + eol + eol
        step = b.split or len(out)
        for start in range(0, len(out), step):
            await resp.write(out[start : start + step])

    async def chunk(choice: dict[str, Any] | None, done_tokens: int) -> None:
        kind = "chat.completion.chunk" if chat else "text_completion"
        obj = _envelope(chat, kind, model, [] if choice is None else [choice])
        if continuous or choice is None:
            obj["usage"] = _usage(b.prompt_tokens, done_tokens)
        await event(orjson.dumps(obj))

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    if chat and b.role_chunk:
        for j in range(n):
            delta = {"role": "assistant", "content": ""}
            await chunk({"index": j, "delta": delta, "logprobs": None, "finish_reason": None}, 0)
    for i in range(b.completion_tokens + 1):
        if b.reset_after == i and request.transport is not None:
            request.transport.abort()
            raise _Reset
        if b.stall_after == i:
            await _until_disconnected(request)
        if i == b.completion_tokens:
            break
        if delay := b.ttft if i == 0 else b.itl:
            await asyncio.sleep(delay)
        finish = b.finish_reason if i == b.completion_tokens - 1 else None
        content: dict[str, Any] = (
            {"delta": {"content": f"tok{i} "}} if chat else {"text": f"tok{i} "}
        )
        for j in range(n):
            # Continuous usage counts per choice, as vLLM does.
            await chunk({"index": j, **content, "logprobs": None, "finish_reason": finish}, i + 1)
    if with_usage:
        await chunk(None, n * b.completion_tokens)
    if b.done:
        await event(b"[DONE]")
    await resp.write_eof()


async def _generate(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    try:
        raw_behavior = request.headers.get(BEHAVIOR_HEADER)
        b = state.behavior.override(raw_behavior) if raw_behavior else state.behavior
        body = orjson.loads(await request.read())
        if not isinstance(body, dict):
            raise ValueError("request body must be a JSON object")
        stream = _vllm_bool(body, "stream")
        _usage_options(body)  # validated whether streaming or not, as pydantic does
    except (ValueError, TypeError) as exc:
        return web.Response(status=400, body=_error_body(400, str(exc)), content_type=_JSON)
    chat, model = request.path == "/v1/chat/completions", str(body.get("model") or "fake-model")
    n, ctype = int(body.get("n") or 1), b.content_type or _JSON
    resp = web.StreamResponse()
    with _tracked(state):
        if b.stall_before_headers:
            await _until_disconnected(request)
        if b.status != 200:
            await _send(request, resp, b.status, _error_body(b.status, "fake error"), ctype)
        elif stream:
            await _stream(request, resp, body, b, n)
        else:
            out = b.raw_body if b.raw_body is not None else _completion_body(chat, model, n, b)
            await _send(request, resp, 200, out, ctype)
    return resp  # after an early close aiohttp finds the connection gone and moves on


# The audio APIs: a multipart form in (the audio file and small fields), chat-like chunks out.
_AUDIO_CHUNKS = {
    "/v1/audio/transcriptions": ("trsc-fake", "transcription.chunk"),
    "/v1/audio/translations": ("trsl-fake", "translation.chunk"),
}


async def _audio_form(request: web.Request) -> dict[str, Any]:
    """The form as vLLM's FastAPI hands it over: the last of a repeated field, a file part
    as its bytes, an empty value as no value."""
    if request.content_type != "multipart/form-data":
        raise ValueError("file: Field required")
    body = await request.read()  # read once already, by _record: parsed again from the bytes
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


def _audio_flags(fields: dict[str, Any]) -> tuple[bool, bool, bool]:
    """stream, stream_include_usage, stream_continuous_usage_stats, validated as vLLM does."""
    stream = _vllm_bool(fields, "stream")
    include = _vllm_bool(fields, "stream_include_usage")
    continuous = _vllm_bool(fields, "stream_continuous_usage_stats")
    if (include or continuous) and not stream:
        raise ValueError("Stream options can only be defined when `stream=True`.")
    return stream, include, continuous


async def _audio_stream(
    request: web.Request, resp: web.StreamResponse, fields: dict[str, Any], b: Behavior
) -> None:
    chunk_id, kind = _AUDIO_CHUNKS[request.path]
    model = str(fields.get("model") or "fake-model")
    _, include_usage, continuous_usage = _audio_flags(fields)
    with_usage = b.usage == "always" or (b.usage == "honor" and include_usage)
    continuous = with_usage and continuous_usage

    eol = b"\r\n" if b.crlf else b"\n"

    async def event(data: bytes) -> None:
        out = (b": ping" + eol + eol if b.keepalive else b"") + b"data: " + data + eol + eol
        step = b.split or len(out)
        for start in range(0, len(out), step):
            await resp.write(out[start : start + step])

    def chunk(choices: list[Any], tokens: int | None) -> bytes:
        obj = {"id": chunk_id, "object": kind, "created": CREATED, "model": model}
        obj["choices"] = choices
        if tokens is not None:
            obj["usage"] = _usage(b.prompt_tokens, tokens)
        return orjson.dumps(obj)

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    await resp.prepare(request)
    for i in range(b.completion_tokens + 1):
        if b.reset_after == i and request.transport is not None:
            request.transport.abort()
            raise _Reset
        if b.stall_after == i:
            await _until_disconnected(request)
        if i == b.completion_tokens:
            break
        if delay := b.ttft if i == 0 else b.itl:
            await asyncio.sleep(delay)
        choice: dict[str, Any] = {"delta": {"content": f"tok{i} "}}
        if i == b.completion_tokens - 1:  # vLLM sets these on the last chunk only
            choice |= {"finish_reason": b.finish_reason, "stop_reason": None}
        await event(chunk([choice], i + 1 if continuous else None))
    if with_usage:
        await event(chunk([], b.completion_tokens))
    if b.done:
        await event(b"[DONE]")
    await resp.write_eof()


def _audio_body(request: web.Request, b: Behavior) -> bytes:
    """A transcription's usage is the audio's duration, never tokens; a translation has none."""
    body: dict[str, Any] = {"text": "".join(f"tok{i} " for i in range(b.completion_tokens))}
    if request.path == "/v1/audio/transcriptions":
        body["usage"] = {"type": "duration", "seconds": 3}
    return orjson.dumps(body)


async def _audio(request: web.Request) -> web.StreamResponse:
    """vLLM's audio routes; ``raw_body`` is the answer's body whether it streams or not."""
    state = request.app[FAKE_STATE]
    try:
        raw_behavior = request.headers.get(BEHAVIOR_HEADER)
        b = state.behavior.override(raw_behavior) if raw_behavior else state.behavior
        fields = await _audio_form(request)
        stream = _audio_flags(fields)[0]
    except (ValueError, TypeError) as exc:
        return web.Response(status=400, body=_error_body(400, str(exc)), content_type=_JSON)
    resp = web.StreamResponse()
    with _tracked(state):
        if b.stall_before_headers:
            await _until_disconnected(request)
        if b.status != 200:
            error = _error_body(b.status, "fake error")
            await _send(request, resp, b.status, error, b.content_type or _JSON)
        elif b.raw_body is not None:
            ctype = b.content_type or ("text/event-stream" if stream else _JSON)
            await _send(request, resp, 200, b.raw_body, ctype)
        elif stream:
            await _audio_stream(request, resp, fields, b)
        else:
            await _send(request, resp, 200, _audio_body(request, b), b.content_type or _JSON)
    return resp


async def _models(request: web.Request) -> web.Response:
    return _json({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})


async def _health(request: web.Request) -> web.Response:
    return web.Response()


async def _embeddings(request: web.Request) -> web.Response:
    data = [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}]
    usage = {"prompt_tokens": 3, "total_tokens": 3}
    return _json({"object": "list", "data": data, "model": "fake-model", "usage": usage})


async def _tokenize(request: web.Request) -> web.Response:
    return _json({"count": len(await request.read())})


async def _echo_headers(request: web.Request) -> web.Response:
    # Repeated headers are joined with ", ", their HTTP-equivalent single form; the exact
    # multidict is in FakeUpstreamState.requests.
    return _json({str(k): ", ".join(request.headers.getall(k)) for k in request.headers})


async def _slow_body(request: web.Request) -> web.StreamResponse:
    pieces = int(request.query.get("pieces", "3"))
    delay = float(request.query.get("delay", "0.01"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    with _tracked(request.app[FAKE_STATE]):
        await resp.prepare(request)
        for i in range(pieces):
            if i and delay:
                await asyncio.sleep(delay)
            await resp.write(f"piece{i}\n".encode())
        await resp.write_eof()
    return resp


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    body = await request.read()  # cached by aiohttp, so handlers can read it again
    state = request.app[FAKE_STATE]
    headers = CIMultiDict(request.headers)
    state.requests.append(
        ReceivedRequest(request.method, request.path_qs, headers, body, request.raw_path)
    )
    state._notify()
    return await handler(request)


def make_fake_upstream(behavior: Behavior | None = None) -> web.Application:
    """The fake upstream app; ``behavior`` is the default each request may override."""
    app = web.Application(middlewares=[_record])
    app[FAKE_STATE] = FakeUpstreamState(behavior or Behavior())
    app.router.add_post("/v1/chat/completions", _generate)
    app.router.add_post("/v1/completions", _generate)
    app.router.add_post("/v1/audio/transcriptions", _audio)
    app.router.add_post("/v1/audio/translations", _audio)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_route("*", "/echo-headers", _echo_headers)
    app.router.add_get("/slow-body", _slow_body)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the fake vLLM upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--behavior", default="{}", help="default Behavior as JSON, e.g. '{\"itl\": 0.02}'"
    )
    args = parser.parse_args(argv)
    try:
        behavior = Behavior().override(args.behavior)
    except (ValueError, TypeError) as exc:
        parser.error(f"--behavior: {exc}")
    app = make_fake_upstream(behavior)
    web.run_app(app, host=args.host, port=args.port, handler_cancellation=True)


if __name__ == "__main__":
    main()
