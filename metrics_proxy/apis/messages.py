"""Anthropic's Messages API as vLLM serves it (``/v1/messages``): every event's data names
its type, the input tokens come first (``message_start``), the output tokens and the stop
reason last (``message_delta``), and ``message_stop`` ends the stream. vLLM always reports
usage on this route, so the proxy changes nothing upstream. Pure: no I/O.

``/v1/messages/count_tokens`` is no generation: it is forwarded, not metered.
"""

from __future__ import annotations

from dataclasses import replace
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
from metrics_proxy.apis.openai import lax_bool

__all__ = ["MESSAGES", "MessagesApi", "message_usage", "response_facts", "stop_word"]

# Anthropic's stop reasons in the words of vLLM's engine, which maps its own finish the
# other way (stop → end_turn, length → max_tokens, tool_calls → tool_use). Other words
# (the real Anthropic's pause_turn, refusal) go on as they are.
_ENGINE_WORDS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "max_tokens": "length",
}
# The deltas that carry generated tokens; a thinking block's signature_delta is made up by
# vLLM when the block closes, from no token of the engine's.
_OUTPUT_DELTAS = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}


def stop_word(value: object) -> str | None:
    """A ``stop_reason`` as the word vLLM's engine finished with; None when there is none
    (vLLM writes null for an engine finish it has no Anthropic word for)."""
    if type(value) is not str:
        return None
    return _ENGINE_WORDS.get(value, value)


def _count(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def message_usage(value: object, input_tokens: int | None = None) -> Usage | None:
    """The Usage in an Anthropic ``usage`` object; ``input_tokens`` stands in when it has
    none (a stream's final usage may leave them to its ``message_start``)."""
    if type(value) is not dict:
        return None
    output = _count(value.get("output_tokens"))
    prompt = _count(value.get("input_tokens"))
    if prompt is None:
        prompt = input_tokens
    return None if output is None or prompt is None else Usage(prompt, output)


def request_facts(obj: dict[str, Any]) -> RequestFacts:
    """Read the facts of a decoded request; never raises. There is no ``n`` (one output),
    and usage always comes (vLLM forces it on for this route)."""
    stream = lax_bool(obj.get("stream"))
    max_tokens = obj.get("max_tokens")
    return RequestFacts(
        stream=stream is True,
        wants_usage=True,
        wants_continuous_usage=False,
        n=1,
        max_tokens=max_tokens if type(max_tokens) is int and max_tokens > 0 else None,
        refused=stream is None,
    )


_NO_RESPONSE_FACTS = ResponseFacts(None, None, 0)


def response_facts(body: bytes) -> ResponseFacts:
    """Read a whole non-streamed message; never raises (anything odd reads as no facts).
    A message has no ``choices``: its one output is the message itself. The finish word is
    Anthropic's, as a large message's scan reads it too."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NO_RESPONSE_FACTS
    if type(obj) is not dict:
        return _NO_RESPONSE_FACTS
    reason = obj.get("stop_reason")
    return ResponseFacts(
        message_usage(obj.get("usage")), reason if type(reason) is str else None, 0
    )


# A large message's usage and stop_reason are top-level members, after its content.
_scan_message = partial(ResponseScanner, read_usage=message_usage, reason_member="stop_reason")


class _BodyReader:
    """A non-streamed message's facts, its stop reason in the engine's words."""

    __slots__ = ("_reader",)

    def __init__(self) -> None:
        self._reader = ResponseReader(response_facts, _scan_message)

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    def facts(self) -> ResponseFacts:
        facts = self._reader.facts()
        return replace(facts, finish_reason=stop_word(facts.finish_reason))


# Shared answers for the events nearly every stream is made of.
_DONE = EventFacts(True, (), None, None, False, False)
_NOTHING = EventFacts(False, (), None, None, False, False)
_OUTPUT_0 = EventFacts(False, (0,), None, None, False, False)
_ERROR = EventFacts(False, (), None, None, False, True)


def _carries_output(delta: object) -> bool:
    if type(delta) is not dict:
        return False
    kind = delta.get("type")
    member = _OUTPUT_DELTAS.get(kind) if type(kind) is str else None
    value = delta.get(member) if member is not None else None
    return bool(value) and type(value) is str


class _EventReader(NothingHeld):
    """Reads one streamed message: its input tokens wait in ``message_start`` for the
    output tokens of ``message_delta``, and are reported with them."""

    __slots__ = ("_input_tokens",)

    def __init__(self) -> None:
        self._input_tokens: int | None = None

    def facts(self, data: bytes) -> EventFacts | None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict:
            return None
        kind = obj.get("type")
        if kind == "content_block_delta":
            return _OUTPUT_0 if _carries_output(obj.get("delta")) else _NOTHING
        if kind == "message_delta":
            return self._message_delta(obj)
        if kind == "message_start":
            self._message_start(obj.get("message"))
            return _NOTHING
        if kind == "message_stop":
            return _DONE
        # vLLM's failures come as an error event; another server's may be OpenAI's member.
        return _ERROR if kind == "error" or "error" in obj else _NOTHING

    def _message_start(self, message: object) -> None:
        if type(message) is dict:
            usage = message.get("usage")
            if type(usage) is dict:
                self._input_tokens = _count(usage.get("input_tokens"))

    def _message_delta(self, obj: dict[str, Any]) -> EventFacts:
        delta = obj.get("delta")
        reason = stop_word(delta.get("stop_reason")) if type(delta) is dict else None
        usage = message_usage(obj.get("usage"), self._input_tokens)
        return EventFacts(False, (), reason, usage, False, False)

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        return None  # the proxy changes nothing of this API's requests


class MessagesApi:
    """``/v1/messages``: usage comes unasked, so requests go upstream as they are."""

    __slots__ = ()
    routes: tuple[str, ...] = ("/v1/messages",)
    answer_is_output = False
    error_event_name: str | None = "error"  # Anthropic's client skips unnamed events

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        return request_facts(obj)

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return body, NO_INJECTION

    def event_reader(self, injection: Injection) -> EventReader:
        return _EventReader()

    def body_reader(self) -> BodyReader:
        return _BodyReader()


MESSAGES = MessagesApi()
