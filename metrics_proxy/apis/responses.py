"""OpenAI's Responses API (``/v1/responses``): each streamed event names itself in its
``type``, output comes in ``response.*.delta`` events, and usage and the final status are in
the response object of the last event (``response.completed``, ``response.incomplete``,
``response.failed``) or of the whole body. The upstream reports usage unasked, so the proxy
changes nothing. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.apis.base import (
    NO_INJECTION,
    BodyReader,
    EventFacts,
    EventReader,
    Injection,
    NothingHeld,
    RequestFacts,
    ResponseFacts,
    Usage,
    UsageMode,
)
from metrics_proxy.apis.body_scan import ResponseReader, ResponseScanner
from metrics_proxy.apis.openai import lax_bool

__all__ = ["RESPONSES", "ResponsesApi", "body_facts", "event_facts", "finish_word"]

# A response still running: it has no finish yet, whatever becomes of this answer.
_RUNNING = frozenset({"queued", "in_progress"})
# The word each final event stands for, when its response object says no status.
_FINAL_EVENTS = {
    "response.completed": "stop",
    "response.incomplete": "length",
    "response.failed": "error",
}
# The events that open a stream: their response object says whether it runs in the
# background, where it outlives the stream.
_OPENING_EVENTS = frozenset({"response.created", "response.queued", "response.in_progress"})
# What a large body's scanner keeps: all a response says about how it ended, nothing it said.
_MEMBERS = ("id", "status", "incomplete_details", "usage")


def finish_word(status: object, details: object) -> str | None:
    """A response's status as the finish word vLLM's engine counts; None while it runs or
    when the status is none this API knows.

    ``incomplete`` is vLLM's ``length`` (``max_output_tokens``, the only reason vLLM gives);
    another reason (OpenAI's ``content_filter``) is passed on as chat's finish words are.
    """
    if status == "completed":
        return "stop"
    if status == "incomplete":
        reason = details.get("reason") if type(details) is dict else None
        return reason if type(reason) is str and reason != "max_output_tokens" else "length"
    if status == "failed":
        return "error"
    if status == "cancelled":
        return "abort"
    return None


def _usage(value: object) -> Usage | None:
    if type(value) is not dict:
        return None
    counts = {"prompt_tokens": value.get("input_tokens")}
    counts["completion_tokens"] = value.get("output_tokens")
    return Usage.from_json(counts)


def _positive(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


_NO_FACTS = ResponseFacts(None, None, 0)


def body_facts(obj: object) -> ResponseFacts:
    """The facts of a response object (a whole body, or a large body's scanned members).
    A response still running (a background one, ``queued``) has its id as pending, and its
    status as its word: the proxy holds it and counts it later with its final one, so that
    word reaches only the log line of its POST."""
    if type(obj) is not dict:
        return _NO_FACTS
    status = obj.get("status")
    usage = _usage(obj.get("usage"))
    response_id = obj.get("id")
    if status in _RUNNING and type(response_id) is str:
        return ResponseFacts(usage, status, 1, pending_id=response_id)
    return ResponseFacts(usage, finish_word(status, obj.get("incomplete_details")), 1)


def _decode(body: bytes) -> ResponseFacts:
    try:
        return body_facts(orjson.loads(body))
    except orjson.JSONDecodeError:
        return _NO_FACTS


class _ScannedBody:
    """A large body (long output, logprobs), scanned for the few top-level members that
    say how it ended; never decoded whole."""

    __slots__ = ("_scanner",)

    def __init__(self) -> None:
        self._scanner = ResponseScanner(members=_MEMBERS)

    def feed(self, chunk: bytes) -> None:
        self._scanner.feed(chunk)

    def facts(self) -> ResponseFacts:
        return body_facts(self._scanner.members())


_DONE = EventFacts(True, (), None, None, False, False)
_NOTHING = EventFacts(False, (), None, None, False, False)
_OUTPUT = EventFacts(False, (0,), None, None, False, False)
_ERROR = EventFacts(False, (), None, None, False, True)


def event_facts(data: bytes) -> EventFacts | None:
    """The facts of one streamed event's data; None when it is not a JSON object."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _DONE if data.strip() == b"[DONE]" else None
    if type(obj) is not dict:
        return None
    kind = obj.get("type")
    if type(kind) is not str:
        return _ERROR if "error" in obj else _NOTHING
    if kind.endswith(".delta"):
        delta = obj.get("delta")
        # One response is one output: output_index counts its items, not choices.
        return _OUTPUT if delta and type(delta) is str else _NOTHING
    if kind in _FINAL_EVENTS:
        return _final(kind, obj.get("response"))
    if kind in _OPENING_EVENTS:
        return _opening(obj.get("response"))
    return _ERROR if kind == "error" else _NOTHING


def _final(kind: str, response: object) -> EventFacts:
    word = usage = None
    if type(response) is dict:
        word = finish_word(response.get("status"), response.get("incomplete_details"))
        usage = _usage(response.get("usage"))
    word = word or _FINAL_EVENTS[kind]
    return EventFacts(False, (), word, usage, False, word == "error")


def _opening(response: object) -> EventFacts:
    if type(response) is not dict or response.get("background") is not True:
        return _NOTHING
    response_id = response.get("id")
    if type(response_id) is not str:
        return _NOTHING
    return EventFacts(False, (), None, None, False, False, pending_id=response_id)


class _EventReader(NothingHeld):
    """Each event says all it has to say on its own, and the proxy changes none."""

    __slots__ = ()

    def facts(self, data: bytes) -> EventFacts | None:
        return event_facts(data)

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        return None


_EVENT_READER = _EventReader()


def request_facts(obj: dict[str, Any]) -> RequestFacts:
    """What a decoded request asks for; never raises. One output, at most
    ``max_output_tokens`` long; usage comes whatever it asks."""
    stream = lax_bool(obj.get("stream"))
    return RequestFacts(
        stream=stream is True,
        wants_usage=False,
        wants_continuous_usage=False,
        n=1,
        max_tokens=_positive(obj.get("max_output_tokens")),
        refused=stream is None,
    )


class ResponsesApi:
    """``POST /v1/responses``, streamed or not."""

    __slots__ = ()
    routes: tuple[str, ...] = ("/v1/responses",)
    answer_is_output = False
    error_event_name: str | None = None  # its errors are OpenAI-shaped

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        return request_facts(obj)

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return body, NO_INJECTION

    def event_reader(self, injection: Injection) -> EventReader:
        return _EVENT_READER

    def body_reader(self) -> BodyReader:
        return ResponseReader(_decode, _ScannedBody)


RESPONSES = ResponsesApi()
