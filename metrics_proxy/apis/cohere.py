"""Cohere's v2 API as vLLM serves it: ``/cohere/v2/chat`` (with ``VLLM_ENABLE_COHERE_API``), a
chat whose stream is Cohere's typed events, and ``/v2/embed``, a pooling request. Pure: no
I/O.

vLLM runs the chat as an OpenAI chat and translates: it always asks its own stream for usage,
which the ``message-end`` event carries (``delta.usage.tokens``), with the finish word mapped
to Cohere's; a non-streamed answer has both at its top level. The counts may be written as
floats (``7.0``): Cohere's usage fields are floats.
"""

from __future__ import annotations

from functools import partial
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
from metrics_proxy.apis.json_answer import JsonAnswerApi, token_count
from metrics_proxy.apis.openai import lax_bool

__all__ = ["COHERE_CHAT", "COHERE_EMBED", "cohere_finish", "cohere_usage", "embed_usage"]

# Cohere's finish words, as vLLM maps its engine's reasons onto them.
_VLLM_REASON = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "TOOL_CALL": "stop",
    "MAX_TOKENS": "length",
    "ERROR": "error",
}


def cohere_finish(word: object) -> str:
    """The engine's reason behind a Cohere finish word; ``stop`` for any word vLLM's
    mapping never writes (COMPLETE is its word for everything it does not map)."""
    return _VLLM_REASON.get(word, "stop") if type(word) is str else "stop"


def cohere_usage(value: object) -> Usage | None:
    """A chat's ``usage``: its ``tokens`` (what the model read and wrote), else its
    ``billed_units``, which vLLM fills with the same counts."""
    if type(value) is not dict:
        return None
    for key in ("tokens", "billed_units"):
        counts = value.get(key)
        if type(counts) is dict:
            prompt = token_count(counts.get("input_tokens"))
            completion = token_count(counts.get("output_tokens", 0))
            if prompt is not None and completion is not None:
                return Usage(prompt, completion)
    return None


def embed_usage(meta: object) -> Usage | None:
    """``/v2/embed``'s ``meta``: vLLM writes ``tokens.input_tokens``, Cohere's own API
    ``billed_units.input_tokens``. Nothing is generated."""
    if type(meta) is not dict:
        return None
    for key in ("tokens", "billed_units"):
        counts = meta.get(key)
        prompt = token_count(counts.get("input_tokens")) if type(counts) is dict else None
        if prompt is not None:
            return Usage(prompt, 0)
    return None


def _has_text(value: object) -> bool:
    return bool(value) and type(value) is str


def _carries_output(kind: object, delta: object) -> bool:
    """Whether an event holds generated text, reasoning, a tool plan or a tool call."""
    message = delta.get("message") if type(delta) is dict else None
    if type(message) is not dict:
        return False
    if kind == "content-delta":
        content = message.get("content")
        return type(content) is dict and (
            _has_text(content.get("text")) or _has_text(content.get("thinking"))
        )
    if kind == "tool-plan-delta":
        return _has_text(message.get("tool_plan"))
    if kind in ("tool-call-start", "tool-call-delta"):
        calls = message.get("tool_calls")
        return type(calls) is dict and bool(calls)
    return False


_DONE = EventFacts(True, (), None, None, False, False)
_OUTPUT = EventFacts(False, (0,), None, None, False, False)
_ERROR = EventFacts(False, (), None, None, False, True)


def _message_end(delta: object) -> EventFacts:
    """The last event: the finish word, the usage, and an ``error`` when the stream failed."""
    if type(delta) is not dict:
        return EventFacts(False, (), "stop", None, False, False)
    reason = cohere_finish(delta.get("finish_reason"))
    usage = cohere_usage(delta.get("usage"))
    return EventFacts(False, (), reason, usage, False, "error" in delta)


def event_facts(data: bytes) -> EventFacts | None:
    """Facts of one event's data; None when it tells the meters nothing."""
    if data.strip() == b"[DONE]":
        return _DONE
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    kind, delta = obj.get("type"), obj.get("delta")
    if kind == "message-end":
        return _message_end(delta)
    if "error" in obj:  # vLLM's own error event, should one come untranslated
        return _ERROR
    return _OUTPUT if _carries_output(kind, delta) else None


class _ChatEvents(NothingHeld):
    """Cohere's events each say all they have to say; the proxy changes none of them."""

    __slots__ = ()

    def facts(self, data: bytes) -> EventFacts | None:
        return event_facts(data)

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        return None


def _chat_answer_facts(body: bytes) -> ResponseFacts:
    """A whole non-streamed answer: top-level usage and finish word (as Cohere writes it)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ResponseFacts(None, None, 0)
    if type(obj) is not dict:
        return ResponseFacts(None, None, 0)
    word = obj.get("finish_reason")
    return ResponseFacts(cohere_usage(obj.get("usage")), word if type(word) is str else None, 0)


class _ChatAnswer:
    """Reads a non-streamed answer as it passes, its finish word turned into vLLM's."""

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = ResponseReader(
            _chat_answer_facts,
            partial(ResponseScanner, read_usage=cohere_usage, reason_member="finish_reason"),
        )

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    def facts(self) -> ResponseFacts:
        facts = self._reader.facts()
        word = facts.finish_reason
        return ResponseFacts(facts.usage, None if word is None else cohere_finish(word), 0)


class CohereChatApi:
    """``/cohere/v2/chat``: streams when ``stream`` reads true (pydantic's lax booleans)."""

    __slots__ = ()
    routes: tuple[str, ...] = ("/cohere/v2/chat",)
    answer_is_output = False
    error_event_name: str | None = None  # errors in OpenAI's shape

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        stream = lax_bool(obj.get("stream"))
        max_tokens = obj.get("max_tokens")
        return RequestFacts(
            stream=stream is True,
            wants_usage=False,
            wants_continuous_usage=False,
            n=1,
            max_tokens=max_tokens if type(max_tokens) is int and max_tokens > 0 else None,
            refused=stream is None,
        )

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return body, NO_INJECTION  # vLLM puts usage in every stream's message-end

    def event_reader(self, injection: Injection) -> EventReader:
        return _ChatEvents()

    def body_reader(self) -> BodyReader:
        return _ChatAnswer()


COHERE_CHAT = CohereChatApi()
COHERE_EMBED = JsonAnswerApi(
    ("/v2/embed",), answer_is_output=True, read_usage=embed_usage, usage_member="meta"
)
