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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import orjson
from aiohttp import BodyPartReader, MultipartReader, WSMsgType, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

BEHAVIOR_HEADER = "X-Fake-Behavior"
_JSON = "application/json"
CREATED = 1700000000  # a fixed timestamp keeps the output byte-for-byte deterministic
_USAGE_MODES = ("honor", "never", "always", "force", "finish")
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
    # "honor" stream_options (vLLM), "never", "always" a final usage chunk, "force" usage on
    # every chunk and a final usage chunk whatever was asked (vLLM's
    # --enable-force-include-usage), "finish" usage on the finish chunk alone (transformers serve)
    usage: str = "honor"
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
    # vLLM's --enable-per-request-metrics: this `metrics` object on the usage chunk / response
    engine_metrics: dict[str, float] | None = None
    # vLLM's system_fingerprint: on each finish chunk, or on the usage chunk with include_usage
    system_fingerprint: str | None = None
    error_after: int | None = None  # /v1/messages stream: an error event after N token steps

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
    responses: dict[str, StoredResponse] = field(default_factory=dict)  # /v1/responses store
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
    if b.engine_metrics is not None:
        body["metrics"] = b.engine_metrics
    return orjson.dumps(body)


async def _paced_steps(request: web.Request, b: Behavior) -> AsyncIterator[int]:
    """Steps 0..completion_tokens of a stream (the last carries no token and ends it), each
    after the Behavior's faults for it and, before a token, its pacing (ttft, then itl)."""
    for i in range(b.completion_tokens + 1):
        if b.reset_after == i and request.transport is not None:
            request.transport.abort()
            raise _Reset
        if b.stall_after == i:
            await _until_disconnected(request)
        if i < b.completion_tokens and (delay := b.ttft if i == 0 else b.itl):
            await asyncio.sleep(delay)
        yield i


async def _stream(
    request: web.Request, resp: web.StreamResponse, body: dict[str, Any], b: Behavior, n: int
) -> None:
    chat, model = _is_chat(request), str(body.get("model") or "fake-model")
    include_usage, continuous_usage = _usage_options(body)
    # vLLM only honours continuous_usage_stats together with include_usage.
    with_usage = b.usage in ("always", "force") or (b.usage == "honor" and include_usage)
    continuous = (with_usage and continuous_usage) or b.usage == "force"
    eol = b"\r\n" if b.crlf else b"\n"

    async def event(data: bytes) -> None:
        out = (b": ping" + eol + eol if b.keepalive else b"") + b"data: " + data + eol + eol
        step = b.split or len(out)
        for start in range(0, len(out), step):
            await resp.write(out[start : start + step])

    async def chunk(choice: dict[str, Any] | None, done_tokens: int) -> None:
        kind = "chat.completion.chunk" if chat else "text_completion"
        obj = _envelope(chat, kind, model, [] if choice is None else [choice])
        on_finish = b.usage == "finish" and choice is not None and choice["finish_reason"]
        if continuous or choice is None or on_finish:
            obj["usage"] = _usage(b.prompt_tokens, done_tokens)
        if choice is None and b.engine_metrics is not None:
            obj["metrics"] = b.engine_metrics
        finishing = choice is not None and choice["finish_reason"] is not None
        if b.system_fingerprint is not None and (choice is None or (finishing and not with_usage)):
            obj["system_fingerprint"] = b.system_fingerprint
        await event(orjson.dumps(obj))

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    if chat and b.role_chunk:
        for j in range(n):
            delta = {"role": "assistant", "content": ""}
            await chunk({"index": j, "delta": delta, "logprobs": None, "finish_reason": None}, 0)
    async for i in _paced_steps(request, b):
        if i == b.completion_tokens:
            break
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
        b, body = await _read_steered(request)
        stream = _vllm_bool(body, "stream")
        _usage_options(body)  # validated whether streaming or not, as pydantic does
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    chat, model = _is_chat(request), str(body.get("model") or "fake-model")
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


# --- Anthropic's Messages API as vLLM serves it: chat underneath, Anthropic's events on top ---

# vLLM's stop_reason for each engine finish; any other finish (abort, ...) gets none.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_MESSAGE_ID = "chatcmpl-fake"  # vLLM reuses the chat completion's id


def _anthropic_error(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def _anthropic_usage(b: Behavior, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": b.prompt_tokens, "output_tokens": output_tokens}


def _message_body(model: str, b: Behavior) -> bytes:
    """A non-streamed message: vLLM dumps it without its None members."""
    text = "".join(f"tok{i} " for i in range(b.completion_tokens))
    content = [{"type": "text", "text": text}] if text else []
    body: dict[str, Any] = {"id": _MESSAGE_ID, "type": "message", "role": "assistant"}
    body |= {"content": content, "model": model}
    if reason := _STOP_REASONS.get(b.finish_reason):
        body["stop_reason"] = reason
    if b.usage != "never":  # vLLM always reports it; "never" plays another server
        body["usage"] = _anthropic_usage(b, b.completion_tokens)
    return orjson.dumps(body)


def _message_start(model: str, b: Behavior) -> dict[str, Any]:
    # vLLM turns the chat stream's first (role) chunk into this: no content yet.
    message: dict[str, Any] = {"id": _MESSAGE_ID, "content": [], "model": model}
    message |= {"stop_reason": None, "stop_sequence": None}
    if b.usage != "never":
        message["usage"] = _anthropic_usage(b, 0)
    return {"type": "message_start", "message": message}


def _message_delta(b: Behavior) -> dict[str, Any]:
    # vLLM turns the chat stream's final usage chunk into this.
    last: dict[str, Any] = {"type": "message_delta"}
    last["delta"] = {"stop_reason": _STOP_REASONS.get(b.finish_reason)}
    if b.usage != "never":
        last["usage"] = _anthropic_usage(b, b.completion_tokens)
    return last


async def _message_stream(
    request: web.Request, resp: web.StreamResponse, model: str, b: Behavior
) -> None:
    eol = b"\r\n" if b.crlf else b"\n"

    async def event(name: str, data: dict[str, Any]) -> None:
        out = b": ping" + eol + eol if b.keepalive else b""
        out += b"event: " + name.encode() + eol + b"data: " + orjson.dumps(data) + eol + eol
        step = b.split or len(out)
        for start in range(0, len(out), step):
            await resp.write(out[start : start + step])

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    await resp.prepare(request)
    await event("message_start", _message_start(model, b))
    async for i in _paced_steps(request, b):
        if b.error_after == i:  # vLLM's converter ends the stream with this on any failure
            error = {"type": "internal_error", "message": "fake engine failure"}
            await event("error", {"type": "error", "error": error})
            await resp.write_eof()
            return
        if i == b.completion_tokens:
            break
        if i == 0:
            block = {"type": "text", "text": ""}
            await event(
                "content_block_start",
                {"type": "content_block_start", "content_block": block, "index": 0},
            )
        delta = {"type": "text_delta", "text": f"tok{i} "}
        await event(
            "content_block_delta", {"type": "content_block_delta", "delta": delta, "index": 0}
        )
    if b.completion_tokens:
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
    await event("message_delta", _message_delta(b))
    if b.done:
        await event("message_stop", {"type": "message_stop"})
    await resp.write_eof()


async def _messages(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    try:
        b, body = await _read_steered(request)
        stream = _vllm_bool(body, "stream")
    except (ValueError, TypeError) as exc:
        return web.Response(status=400, body=_anthropic_error(400, str(exc)), content_type=_JSON)
    model, ctype = str(body.get("model") or "fake-model"), b.content_type or _JSON
    resp = web.StreamResponse()
    with _tracked(state):
        if b.stall_before_headers:
            await _until_disconnected(request)
        if b.status != 200:
            await _send(request, resp, b.status, _anthropic_error(b.status, "fake error"), ctype)
        elif stream:
            await _message_stream(request, resp, model, b)
        else:
            out = b.raw_body if b.raw_body is not None else _message_body(model, b)
            await _send(request, resp, 200, out, ctype)
    return resp


async def _count_tokens(request: web.Request) -> web.Response:
    tokens = request.app[FAKE_STATE].behavior.prompt_tokens
    return _json({"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}})


# --- OpenAI's Responses API (/v1/responses), as vLLM 0.33 serves it -----------------------------


@dataclass(eq=False)
class StoredResponse:
    """A response kept for ``GET /v1/responses/{id}`` (vLLM's store): its latest object, the
    SSE events of a background stream so far, whether it is over, and the task running it."""

    body: dict[str, Any]
    stream: bool = False  # a background stream: its events are kept, to be streamed again
    events: list[bytes] = field(default_factory=list)
    finished: bool = False
    task: asyncio.Task[None] | None = None


def _response_status(finish: str) -> tuple[str, dict[str, str] | None]:
    """The status (and incomplete_details) vLLM gives an engine finish reason; "failed",
    "cancelled" and "content_filter" stand for themselves, for tests."""
    if finish in ("length", "content_filter"):
        return "incomplete", {"reason": "max_output_tokens" if finish == "length" else finish}
    if finish in ("failed", "cancelled", "error"):
        return "failed" if finish == "error" else finish, None
    return "completed", None


def _response_usage(b: Behavior) -> dict[str, Any] | None:
    if b.usage == "never":
        return None
    p, c = b.prompt_tokens, b.completion_tokens
    return {
        "input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + c,
    }  # fmt: skip


def _response_output(b: Behavior) -> list[dict[str, Any]]:
    text = "".join(f"tok{i} " for i in range(b.completion_tokens))
    part: dict[str, Any] = {
        "annotations": [],
        "text": text,
        "type": "output_text",
        "logprobs": None,
    }
    return [{"id": "msg_fake", "content": [part], "role": "assistant", "type": "message"}]


def _response(
    resp_id: str, fields: dict[str, Any], status: str, b: Behavior | None = None
) -> dict[str, Any]:
    """A response object in vLLM's member order; with ``b``, the finished one: its output,
    usage and the status ``b.finish_reason`` stands for."""
    details: dict[str, str] | None = None
    output: list[dict[str, Any]] = []
    usage = None
    if b is not None:
        status, details = _response_status(b.finish_reason)
        output, usage = _response_output(b), _response_usage(b)
    return {
        "id": resp_id, "created_at": CREATED, "incomplete_details": details,
        "instructions": None, "metadata": None, "model": str(fields.get("model") or "fake-model"),
        "object": "response", "output": output, "parallel_tool_calls": True,
        "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "background": _vllm_bool(fields, "background"),
        "max_output_tokens": fields.get("max_output_tokens") or 1024, "max_tool_calls": None,
        "previous_response_id": None, "prompt": None, "reasoning": None,
        "service_tier": "auto", "status": status, "text": None, "top_logprobs": None,
        "truncation": "disabled", "usage": usage, "user": None,
    }  # fmt: skip


async def _response_events(
    resp_id: str, fields: dict[str, Any], b: Behavior
) -> AsyncIterator[dict[str, Any]]:
    """vLLM's events for one response, deltas at the Behavior's pace. The last is
    ``response.completed`` (vLLM sends it for an incomplete response too), OpenAI's
    ``response.failed`` for "failed", or an ``error`` event for "error"."""
    started = _response(resp_id, fields, "in_progress")
    yield {"type": "response.created", "response": started}
    yield {"type": "response.in_progress", "response": started}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield {"type": "response.content_part.added", "item_id": "msg_fake", "part": part}
    for i in range(b.completion_tokens):
        if delay := b.ttft if i == 0 else b.itl:
            await asyncio.sleep(delay)
        yield {"type": "response.output_text.delta", "item_id": "msg_fake", "delta": f"tok{i} "}
    if b.finish_reason == "error":
        yield {"type": "error", "code": "server_error", "message": "fake error", "param": None}
        return
    final = _response(resp_id, fields, "", b)
    kind = "response.failed" if final["status"] == "failed" else "response.completed"
    yield {"type": kind, "response": final}


def _sse_events(b: Behavior) -> Callable[[dict[str, Any], int], bytes]:
    eol = b"\r\n" if b.crlf else b"\n"

    def encode(event: dict[str, Any], number: int) -> bytes:
        data = orjson.dumps({**event, "sequence_number": number})
        kind: str = event["type"]
        return b"event: " + kind.encode() + eol + b"data: " + data + eol + eol

    return encode


async def _stream_response(
    request: web.Request, resp: web.StreamResponse, events: AsyncIterator[bytes], b: Behavior
) -> None:
    """Write SSE events as they come; reset_after/stall_after count the deltas written."""
    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    await resp.prepare(request)
    deltas = 0
    async for event in events:
        if b"response.output_text.delta" in event.split(b"\n", 1)[0]:
            if b.reset_after == deltas and request.transport is not None:
                request.transport.abort()
                raise _Reset
            if b.stall_after == deltas:
                await _until_disconnected(request)
            deltas += 1
        step = b.split or len(event)
        for start in range(0, len(event), step):
            await resp.write(event[start : start + step])
    await resp.write_eof()


async def _encoded(resp_id: str, fields: dict[str, Any], b: Behavior) -> AsyncIterator[bytes]:
    encode = _sse_events(b)
    number = 0
    async for event in _response_events(resp_id, fields, b):
        yield encode(event, number)
        number += 1


def _has_more(stored: StoredResponse, index: int, state: FakeUpstreamState) -> bool:
    return len(stored.events) > index or stored.finished


async def _replay(
    state: FakeUpstreamState, stored: StoredResponse, after: int
) -> AsyncIterator[bytes]:
    """A background stream's events from index ``after + 1``, waiting for more until it is
    over."""
    index = after + 1
    while True:
        while index < len(stored.events):
            yield stored.events[index]
            index += 1
        if stored.finished:
            return
        await state.wait_until(partial(_has_more, stored, index), 60)


async def _run_in_background(
    state: FakeUpstreamState, stored: StoredResponse, fields: dict[str, Any], b: Behavior
) -> None:
    """The work of a background response: its events (kept for a background stream), then
    its final object in the store, as vLLM's background task does."""
    resp_id = stored.body["id"]
    try:
        stored.body = {**stored.body, "status": "in_progress"}
        async for event in _encoded(resp_id, fields, b):
            if stored.stream:
                stored.events.append(event)
                state._notify()
        stored.body = _response(resp_id, fields, "", b)
    finally:
        stored.finished = True
        state._notify()


def _response_request(fields: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(stream, background, store) as vLLM reads them; ValueError where it refuses."""
    stream, background = _vllm_bool(fields, "stream"), _vllm_bool(fields, "background")
    store = "store" not in fields or _vllm_bool(fields, "store")
    if background and not store:
        raise ValueError("background can only be used when `store` is true")
    return stream, background, store


async def _create_response(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    try:
        b, fields = await _read_steered(request)
        stream, background, store = _response_request(fields)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    request_id = fields.get("request_id")
    resp_id = request_id if isinstance(request_id, str) else f"resp_fake{len(state.requests)}"
    resp = web.StreamResponse()
    with _tracked(state):
        if b.stall_before_headers:
            await _until_disconnected(request)
        if b.status != 200:
            await _send(request, resp, b.status, _error_body(b.status, "fake error"), _JSON)
        elif background:
            await _start_background(request, resp, state, resp_id, fields, b, stream)
        elif stream:
            await _stream_response(request, resp, _encoded(resp_id, fields, b), b)
        else:
            await _answer_response(request, resp, state, resp_id, fields, b, store)
    return resp


async def _answer_response(
    request: web.Request, resp: web.StreamResponse, state: FakeUpstreamState, resp_id: str,
    fields: dict[str, Any], b: Behavior, store: bool,
) -> None:  # fmt: skip
    if b.finish_reason == "error":  # vLLM's GenerationError
        await _send(request, resp, 500, _error_body(500, "Internal server error"), _JSON)
        return
    for i in range(b.completion_tokens):  # the engine works before the answer
        if delay := b.ttft if i == 0 else b.itl:
            await asyncio.sleep(delay)
    body = _response(resp_id, fields, "", b)
    if store:
        state.responses[resp_id] = StoredResponse(body, finished=True)
    out = b.raw_body if b.raw_body is not None else orjson.dumps(body)
    await _send(request, resp, 200, out, b.content_type or _JSON)


async def _start_background(
    request: web.Request, resp: web.StreamResponse, state: FakeUpstreamState, resp_id: str,
    fields: dict[str, Any], b: Behavior, stream: bool,
) -> None:  # fmt: skip
    """``queued`` at once while a task does the work; a background stream is the task's events."""
    stored = StoredResponse(_response(resp_id, fields, "queued"), stream=stream)
    state.responses[resp_id] = stored
    stored.task = asyncio.create_task(_run_in_background(state, stored, fields, b))
    if stream:
        await _stream_response(request, resp, _replay(state, stored, -1), b)
    else:
        await _send(request, resp, 200, orjson.dumps(stored.body), _JSON)


async def _retrieve_response(request: web.Request) -> web.StreamResponse:
    state = request.app[FAKE_STATE]
    resp_id = request.match_info["response_id"]
    stored = state.responses.get(resp_id)
    if stored is None:
        message = f"Response with id '{resp_id}' not found."
        return web.Response(status=404, body=_error_body(404, message), content_type=_JSON)
    if not _vllm_bool(dict(request.query), "stream"):
        return _json(stored.body)
    if not stored.stream:  # vLLM keeps the events of background streams only
        message = f"Unknown response_id: {resp_id}"
        return web.Response(status=400, body=_error_body(400, message), content_type=_JSON)
    after = int(request.query.get("starting_after", "-1"))
    resp = web.StreamResponse()
    with _tracked(state):
        await _stream_response(request, resp, _replay(state, stored, after), state.behavior)
    return resp


async def _cancel_response(request: web.Request) -> web.Response:
    state = request.app[FAKE_STATE]
    stored = state.responses.get(request.match_info["response_id"])
    if stored is None:
        return web.Response(status=404, body=_error_body(404, "not found"), content_type=_JSON)
    if stored.body["status"] not in ("queued", "in_progress"):
        message = "Cannot cancel a synchronous response."
        return web.Response(status=400, body=_error_body(400, message), content_type=_JSON)
    stored.body = {**stored.body, "status": "cancelled"}
    if stored.task is not None:
        stored.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stored.task
    return _json(stored.body)


async def _stop_background(app: web.Application) -> None:
    for stored in app[FAKE_STATE].responses.values():
        if stored.task is not None:
            stored.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stored.task


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
    async for i in _paced_steps(request, b):
        if i == b.completion_tokens:
            break
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
        b = _steered(request)
        fields = await _audio_form(request)
        stream = _audio_flags(fields)[0]
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
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


# --- vLLM's pooling routes and its other engine routes --------------------------------------
# Each answers in vLLM's shape. A JSON answer comes once the request is done, after `ttft`; it
# is written in `split`-byte pieces, and `reset_after` / `stall_after` count those pieces. The
# streams (tokens in and out, Cohere's chat) take the knobs as chat's stream does.

_POOLING_ANSWERS: dict[str, tuple[str, dict[str, Any]]] = {  # path: (id, one datum)
    "/v1/embeddings": ("embd-fake", {"object": "embedding", "embedding": [0.0, 0.5, 1.0]}),
    "/pooling": ("pool-fake", {"object": "pooling", "data": [0.0, 0.5, 1.0]}),
    "/classify": ("classify-fake", {"label": "yes", "probs": [0.25, 0.75], "num_classes": 2}),
    "/score": ("score-fake", {"object": "score", "score": 0.5}),
    "/v1/score": ("score-fake", {"object": "score", "score": 0.5}),
}
_RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
_POOLING_PATHS = (*_POOLING_ANSWERS, *_RERANK_PATHS, "/v2/embed")
_COHERE_WORDS = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}
_INVOKED_CHAT = web.RequestKey("fake_invoked_chat", bool)  # /invocations got a chat body


def _is_chat(request: web.Request) -> bool:
    return request.path == "/v1/chat/completions" or request.get(_INVOKED_CHAT, False)


def _steered(request: web.Request) -> Behavior:
    """The fake's Behavior, as this request's header overrides it."""
    raw_behavior = request.headers.get(BEHAVIOR_HEADER)
    state = request.app[FAKE_STATE]
    return state.behavior.override(raw_behavior) if raw_behavior else state.behavior


async def _read_steered(request: web.Request) -> tuple[Behavior, dict[str, Any]]:
    """The request's Behavior and its JSON object body; ValueError for a bad one."""
    b = _steered(request)
    body = orjson.loads(await request.read())
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    return b, body


def _bad_request(exc: Exception) -> web.Response:
    return web.Response(status=400, body=_error_body(400, str(exc)), content_type=_JSON)


async def _send_pieces(
    request: web.Request, resp: web.StreamResponse, body: bytes, b: Behavior
) -> None:
    resp.headers["Content-Type"] = b.content_type or _JSON
    resp.content_length = len(body)
    await resp.prepare(request)
    step = b.split or len(body) or 1
    for count, start in enumerate(range(0, len(body), step)):
        if b.reset_after == count and request.transport is not None:
            request.transport.abort()
            raise _Reset
        if b.stall_after == count:
            await _until_disconnected(request)
        await resp.write(body[start : start + step])
    await resp.write_eof()


async def _json_answer(
    request: web.Request, b: Behavior, make_body: Callable[[], bytes]
) -> web.StreamResponse:
    """One JSON answer, sent as vLLM sends it once the request is done."""
    resp = web.StreamResponse()
    with _tracked(request.app[FAKE_STATE]):
        if b.stall_before_headers:
            await _until_disconnected(request)
        if b.ttft:
            await asyncio.sleep(b.ttft)
        if b.status != 200:
            error = _error_body(b.status, "fake error")
            await _send(request, resp, b.status, error, b.content_type or _JSON)
        else:
            body = b.raw_body if b.raw_body is not None else make_body()
            await _send_pieces(request, resp, body, b)
    return resp


def _input_count(body: dict[str, Any]) -> int:
    """How many inputs a pooling request holds; vLLM answers one datum for each."""
    for name in ("input", "texts", "documents", "text_2", "data_2", "items"):
        value = body.get(name)
        if isinstance(value, list) and value and not isinstance(value[0], int):
            return len(value)
    return 1


def _invoked_pooling_path(body: dict[str, Any]) -> str:
    """The pooling route whose request type this /invocations body validates as."""
    if "query" in body and "documents" in body:
        return "/rerank"
    if any(name in body for name in ("text_1", "queries", "data_1")):
        return "/score"
    return "/v1/embeddings"


def _pooling_answer(path: str, body: dict[str, Any], b: Behavior) -> dict[str, Any]:
    model, count, p = str(body.get("model") or "fake-model"), _input_count(body), b.prompt_tokens
    if path in _RERANK_PATHS:  # a rerank usage of vLLM's that says only total_tokens
        results = [
            {"index": i, "document": {"text": f"doc{i}"}, "relevance_score": 0.5}
            for i in range(count)
        ]
        usage = {"total_tokens": p}
        return {"id": "rerank-fake", "model": model, "usage": usage, "results": results}
    if path == "/v2/embed":
        meta = {"api_version": {"version": "2"}, "tokens": {"input_tokens": p}}
        embeddings = {"float": [[0.0, 0.5, 1.0]] * count}
        return {"id": "embd-fake", "embeddings": embeddings, "texts": None, "meta": meta}
    answer_id, datum = _POOLING_ANSWERS[path]
    data = [{"index": i, **datum} for i in range(count)]
    answer: dict[str, Any] = {"id": answer_id, "object": "list", "created": CREATED}
    return answer | {"model": model, "data": data, "usage": _usage(p, 0)}


def _pooling_body(path: str, body: dict[str, Any], b: Behavior) -> bytes:
    answer = _pooling_answer(path, body, b)
    if b.usage == "never":
        answer.pop("usage", None)
        answer.get("meta", {}).pop("tokens", None)
    return orjson.dumps(answer)


async def _pooling(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await _read_steered(request)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    path = request.path
    if path == "/invocations":
        path = _invoked_pooling_path(body)
    return await _json_answer(request, b, lambda: _pooling_body(path, body, b))


async def _invocations(request: web.Request) -> web.StreamResponse:
    """SageMaker's route: chat, completions or pooling, by what the body holds."""
    try:
        _, body = await _read_steered(request)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    if isinstance(body.get("messages"), list):
        request[_INVOKED_CHAT] = True
        return await _generate(request)
    if body.get("prompt") is not None or body.get("prompt_embeds") is not None:
        return await _generate(request)
    return await _pooling(request)


async def _chat_batch(request: web.Request) -> web.StreamResponse:
    """Several conversations in one request, one choice each; never streamed."""
    try:
        b, body = await _read_steered(request)
        if _vllm_bool(body, "stream"):
            raise ValueError("Streaming is not supported for batch chat completions")
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    messages, model = body.get("messages"), str(body.get("model") or "fake-model")
    conversations = len(messages) if isinstance(messages, list) else 1
    return await _json_answer(request, b, lambda: _completion_body(True, model, conversations, b))


def _decisions_body(body: dict[str, Any], b: Behavior) -> bytes:
    questions = body.get("questions")
    count = len(questions) if isinstance(questions, list) else 0
    answers = [{"type": "predicate", "name": f"q{i}", "probability": 0.5} for i in range(count)]
    p, c = b.prompt_tokens, b.completion_tokens
    usage: dict[str, Any] = {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}}
    usage |= {"output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0}}
    answer: dict[str, Any] = {"model": str(body.get("model") or "fake-model"), "answers": answers}
    if b.usage != "never":
        answer["usage"] = usage | {"total_tokens": p + c}
    return orjson.dumps(answer)


async def _decisions(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await _read_steered(request)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    return await _json_answer(request, b, lambda: _decisions_body(body, b))


def _generative_scoring_body(body: dict[str, Any], b: Behavior) -> bytes:
    items = body.get("items")
    count = len(items) if isinstance(items, list) else 0
    data = [{"index": i, "object": "score", "score": 0.5} for i in range(count)]
    answer: dict[str, Any] = {"id": "generative-scoring-fake", "object": "list", "created": CREATED}
    answer |= {"model": str(body.get("model") or "fake-model"), "data": data}
    if b.usage != "never":
        answer["usage"] = _usage(b.prompt_tokens, b.completion_tokens)
    return orjson.dumps(answer)


async def _generative_scoring(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await _read_steered(request)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    return await _json_answer(request, b, lambda: _generative_scoring_body(body, b))


async def _event_stream(
    request: web.Request,
    resp: web.StreamResponse,
    b: Behavior,
    steps: tuple[list[bytes], Callable[[int], list[bytes]], list[bytes]],
) -> None:
    """An SSE stream steered by `b` as chat's is: the first events, those of each token step
    (`ttft`, `itl`, `reset_after`, `stall_after`), the last ones, then `[DONE]`."""
    first, step_events, last = steps
    eol = b"\r\n" if b.crlf else b"\n"

    async def event(data: bytes) -> None:
        out = (b": ping" + eol + eol if b.keepalive else b"") + b"data: " + data + eol + eol
        size = b.split or len(out)
        for start in range(0, len(out), size):
            await resp.write(out[start : start + size])

    resp.headers["Content-Type"] = b.content_type or "text/event-stream"
    resp.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    for data in first:
        await event(data)
    async for i in _paced_steps(request, b):
        if i == b.completion_tokens:
            break
        for data in step_events(i):
            await event(data)
    for data in last:
        await event(data)
    if b.done:
        await event(b"[DONE]")
    await resp.write_eof()


def _token_steps(
    body: dict[str, Any], b: Behavior, n: int
) -> tuple[list[bytes], Callable[[int], list[bytes]], list[bytes]]:
    """/inference/v1/generate's stream: a chunk of token ids per output and step, usage on
    each (continuous_usage_stats) and in a last usage-only chunk when asked."""
    include_usage, continuous_usage = _usage_options(body)
    with_usage = b.usage == "always" or (b.usage == "honor" and include_usage)
    last_step = b.completion_tokens - 1

    def step(i: int) -> list[bytes]:
        finish = b.finish_reason if i == last_step else None
        chunks = []
        for j in range(n):
            choice = {"index": j, "logprobs": None, "finish_reason": finish, "token_ids": [100 + i]}
            chunk: dict[str, Any] = {"request_id": "generate-tokens-fake", "choices": [choice]}
            if with_usage and continuous_usage:
                chunk["usage"] = _usage(b.prompt_tokens, i + 1)
            chunks.append(orjson.dumps(chunk))
        return chunks

    usage = _usage(b.prompt_tokens, n * b.completion_tokens)
    final = {"request_id": "generate-tokens-fake", "choices": [], "usage": usage}
    return [], step, [orjson.dumps(final)] if with_usage else []


def _tokens_body(n: int, b: Behavior) -> bytes:
    token_ids = [100 + i for i in range(b.completion_tokens)]
    choices = [
        {"index": j, "logprobs": None, "finish_reason": b.finish_reason, "token_ids": token_ids}
        for j in range(n)
    ]
    answer: dict[str, Any] = {"request_id": "generate-tokens-fake", "choices": choices}
    if b.usage != "never":
        answer["usage"] = _usage(b.prompt_tokens, n * b.completion_tokens)
    return orjson.dumps(answer | {"prompt_logprobs": None, "kv_transfer_params": None})


async def _generate_tokens(request: web.Request) -> web.StreamResponse:
    """Tokens in, tokens out: `token_ids` and `sampling_params`, OpenAI's stream options."""
    try:
        b, body = await _read_steered(request)
        params = body.get("sampling_params")
        if not isinstance(params, dict) or not isinstance(body.get("token_ids"), list):
            raise ValueError("token_ids and sampling_params are required")
        stream = _vllm_bool(body, "stream")
        _usage_options(body)
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    n = int(params.get("n") or 1)
    if not stream:
        return await _json_answer(request, b, lambda: _tokens_body(n, b))
    resp = web.StreamResponse()
    with _tracked(request.app[FAKE_STATE]):
        await _event_stream(request, resp, b, _token_steps(body, b, n))
    return resp


def _cohere_usage(b: Behavior) -> dict[str, Any]:
    # Cohere's usage fields are floats: vLLM's pydantic writes 7 as 7.0.
    counts = {"input_tokens": float(b.prompt_tokens), "output_tokens": float(b.completion_tokens)}
    return {"billed_units": counts, "tokens": counts}


def _cohere_end(b: Behavior) -> dict[str, Any]:
    """The message-end's delta: Cohere's finish word and the usage, or the error."""
    if b.finish_reason == "error":
        return {"error": "fake error", "finish_reason": "ERROR"}
    delta: dict[str, Any] = {"finish_reason": _COHERE_WORDS.get(b.finish_reason, "COMPLETE")}
    if b.usage != "never":
        delta["usage"] = _cohere_usage(b)
    return delta


def _cohere_steps(b: Behavior) -> tuple[list[bytes], Callable[[int], list[bytes]], list[bytes]]:
    """Cohere's typed events, `type` last as vLLM's pydantic writes them."""
    start = {"id": "cohere-fake", "delta": {"message": {"role": "assistant"}}}
    block = {"message": {"content": {"type": "text", "text": ""}}}
    first: list[dict[str, Any]] = [start | {"type": "message-start"}]
    first.append({"index": 0, "delta": block, "type": "content-start"})

    def step(i: int) -> list[bytes]:
        delta = {"message": {"content": {"text": f"tok{i} "}}}
        return [orjson.dumps({"index": 0, "delta": delta, "type": "content-delta"})]

    end = {"id": "cohere-fake", "delta": _cohere_end(b), "type": "message-end"}
    last = [{"index": 0, "type": "content-end"}, end]
    return [orjson.dumps(e) for e in first], step, [orjson.dumps(e) for e in last]


def _cohere_body(b: Behavior) -> bytes:
    text = "".join(f"tok{i} " for i in range(b.completion_tokens))
    message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
    end = _cohere_end(b)
    answer = {"id": "cohere-fake", "finish_reason": end["finish_reason"], "message": message}
    return orjson.dumps(answer | ({"usage": end["usage"]} if "usage" in end else {}))


async def _cohere_chat(request: web.Request) -> web.StreamResponse:
    """Cohere's v2 chat: its typed events when streamed, its answer object when not."""
    try:
        b, body = await _read_steered(request)
        stream = _vllm_bool(body, "stream")
    except (ValueError, TypeError) as exc:
        return _bad_request(exc)
    if not stream:
        return await _json_answer(request, b, lambda: _cohere_body(b))
    resp = web.StreamResponse()
    with _tracked(request.app[FAKE_STATE]):
        await _event_stream(request, resp, b, _cohere_steps(b))
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
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
    app.router.add_post("/v1/responses", _create_response)
    app.router.add_get("/v1/responses/{response_id}", _retrieve_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", _cancel_response)
    app.on_cleanup.append(_stop_background)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    for path in _POOLING_PATHS:
        app.router.add_post(path, _pooling)
    app.router.add_post("/v1/chat/completions/batch", _chat_batch)
    app.router.add_post("/inference/v1/generate", _generate_tokens)
    app.router.add_post("/cohere/v2/chat", _cohere_chat)
    app.router.add_post("/v1/decisions", _decisions)
    app.router.add_post("/generative_scoring", _generative_scoring)
    app.router.add_post("/invocations", _invocations)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_route("*", "/echo-headers", _echo_headers)
    app.router.add_get("/slow-body", _slow_body)
    app.router.add_get("/v1/realtime", _realtime)
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
