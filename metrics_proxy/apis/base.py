"""What every metered API shares: the facts the meters read, and the interface an API
module fills in. Pure: no I/O, and nothing of any one API's JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeGuard

import orjson

from metrics_proxy.families import FinishedReason
from metrics_proxy.json_members import WHITESPACE

__all__ = [
    "NO_INJECTION",
    "Api",
    "ApiChoice",
    "BadRequestBody",
    "BodyReader",
    "EngineTimes",
    "EventFacts",
    "EventReader",
    "FormApi",
    "FormFields",
    "Injection",
    "NothingHeld",
    "RequestFacts",
    "ResponseFacts",
    "Usage",
    "UsageMode",
    "parse_request",
    "requested_model",
    "streams_its_body",
    "vllm_finished_reason",
]


# Usage, RequestFacts and ResponseFacts are built for every request: as frozen dataclasses
# each field cost an object.__setattr__ call, four times the build of a plain one (RequestFacts:
# 9.9k instructions against 2.3k). They are read, never changed.
@dataclass(slots=True)
class Usage:
    """Token counts reported by the upstream."""

    prompt_tokens: int
    completion_tokens: int

    @staticmethod
    def from_json(value: object) -> Usage | None:
        """The Usage in a decoded `usage` member, or None when it is absent or malformed."""
        if type(value) is not dict:
            return None
        prompt = value.get("prompt_tokens")
        completion = value.get("completion_tokens")
        if completion is None:
            completion = 0  # vLLM declares it optional
        # Negative counts are refused: they would feed counters that must never go down.
        if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0:
            return Usage(prompt, completion)
        return None


@dataclass(frozen=True, slots=True)
class EngineTimes:
    """What vLLM's engine measured of one request (``--enable-per-request-metrics``), in
    seconds: waiting in the engine's queue, scheduled → first token, first → last token."""

    queue: float
    prefill: float
    decode: float

    @staticmethod
    def from_json(value: object) -> EngineTimes | None:
        """From vLLM's `metrics` member (`queue_time_ms`, `time_to_first_token_ms`,
        `generation_time_ms`), or None when it is absent or not all three are numbers."""
        if type(value) is not dict:
            return None
        seconds: list[float] = []
        for key in _ENGINE_TIME_KEYS:
            millis = value.get(key)
            if not isinstance(millis, int | float) or isinstance(millis, bool):
                return None
            if not 0 <= millis < _MAX_ENGINE_MS:  # NaN fails this too
                return None
            seconds.append(millis / 1000)
        return EngineTimes(*seconds)


_ENGINE_TIME_KEYS = ("queue_time_ms", "time_to_first_token_ms", "generation_time_ms")
_MAX_ENGINE_MS = 1e10  # about four months: anything longer is not a measurement


@dataclass(slots=True)
class RequestFacts:
    """What a request asks for: the usage flags read as vLLM reads them (lax_bool), n and
    max_tokens defensively (a wrong type means the default)."""

    stream: bool
    wants_usage: bool  # stream_options.include_usage reads true
    wants_continuous_usage: bool  # stream_options.continuous_usage_stats reads true
    n: int
    max_tokens: int | None  # max_completion_tokens, else max_tokens, when a positive int
    # stream or stream_options holds a value vLLM refuses with a 400: nothing is added to it.
    refused: bool = False
    # The model a form names (its "model" field, as text); a JSON body's is requested_model's.
    model: str | None = None


class UsageMode(StrEnum):
    """How much usage the proxy asks a streaming upstream for, whatever the client asked."""

    NONE = "none"
    INCLUDE = "include"  # stream_options.include_usage: one usage-only chunk at the end
    CONTINUOUS = "continuous"  # and vLLM's continuous_usage_stats: usage on every chunk


@dataclass(frozen=True, slots=True)
class Injection:
    """What the proxy must hide from the client because it asked upstream for it, and only
    that: usage a server sends of its own accord reaches the client as sent.

    strip_final_usage: drop the final usage-only chunk (`choices: []`), which include_usage
    asked for (unless the server shows it sends usage anyway).
    strip_chunk_usage: remove `usage` from chunks with choices: the proxy asked for vLLM's
    continuous_usage_stats, which the client did not.
    strip_null_usage: remove `"usage": null` from chunks with choices, which OpenAI-style
    servers add once include_usage is on.
    """

    strip_final_usage: bool
    strip_chunk_usage: bool
    strip_null_usage: bool = True


NO_INJECTION = Injection(strip_final_usage=False, strip_chunk_usage=False, strip_null_usage=False)


@dataclass(slots=True)
class ResponseFacts:
    """What a non-streaming completion or chat response tells the meters."""

    usage: Usage | None
    finish_reason: str | None  # the last non-null choices[*].finish_reason
    choices: int
    engine: EngineTimes | None = None
    # The id of a response that runs on after this answer (a background response, still
    # queued): it is counted when a later answer shows it finished, not now.
    pending_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What one streamed event tells the meters (each API reads its own events)."""

    done: bool  # the `[DONE]` sentinel
    outputs: tuple[int, ...]  # `index` of each choice (output) carrying generated output in it
    finish_reason: str | None  # the last non-null choices[*].finish_reason
    usage: Usage | None
    usage_only: bool  # `choices: []` with usage: vLLM's final include_usage chunk
    error: bool  # a top-level "error" member: the upstream failed mid-stream
    # A top-level "usage" member, even null: OpenAI-style servers put "usage": null on every
    # chunk once include_usage is on, and a client that did not ask must not see it.
    usage_key: bool = False
    engine: EngineTimes | None = None  # the engine's own times, where it reports them
    # The id of a response that runs on whatever becomes of this stream (a background
    # response): if the stream ends before its final status, it is counted when a later
    # answer shows that status.
    pending_id: str | None = None


class BadRequestBody(ValueError):
    """A request body the proxy cannot read; the message is safe to show and never echoes it."""


class BodyReader(Protocol):
    """Reads a non-streamed answer chunk by chunk as it passes, keeping little of it."""

    def feed(self, chunk: bytes) -> None: ...
    def facts(self) -> ResponseFacts: ...


class EventReader(Protocol):
    """Reads one response's stream of events, in order; it may keep what an API spreads over
    several events (the Messages API's input tokens come first, its output tokens last)."""

    def facts(self, data: bytes) -> EventFacts | None:
        """The facts of one event's data; None when it tells the meters nothing."""

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        """An event as the client would have had it without the proxy's change: None to
        keep it as it is, the new data, or b"" to drop the event whole. Asked only of
        events with a ``usage`` member, the only ones a change of the proxy's shows in."""

    def holds(self, facts: EventFacts) -> bool:
        """Whether a finishing event must wait for the next one: what the proxy's change
        moved off it may come back from there (asked only of events with a finish)."""

    def release(
        self, held: list[bytes], facts: EventFacts | None, data: bytes | None
    ) -> list[bytes] | None:
        """The data of the events held back, as they go out now that ``data`` (None: the
        end) came after them, in order; None to hold them on."""


class NothingHeld:
    """For readers of APIs whose events never wait for the next one."""

    __slots__ = ()

    def holds(self, facts: EventFacts) -> bool:
        return False

    def release(
        self, held: list[bytes], facts: EventFacts | None, data: bytes | None
    ) -> list[bytes] | None:
        return held  # holds() never said to hold one


class Api(Protocol):
    """One metered API: everything the proxy must know of its JSON, and nothing more.

    The SSE decoder, the stream meter, the relay and the record know none of this; they ask
    the API module of the route.
    """

    routes: tuple[str, ...]
    # The answer is the request's one output, as vLLM's engine counts a pooling request's:
    # its arrival is the first token (TTFT and prefill observed then), and nothing is
    # generated.
    answer_is_output: bool
    # The SSE event name of this API's error events, or None for OpenAI's unnamed ones. A
    # stream the proxy breaks off ends with an error event its clients read: Anthropic's
    # client libraries skip events without a name.
    error_event_name: str | None

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        """What a decoded request asks for (stream, n, max_tokens, usage); never raises."""

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        """The body to send upstream so that its counts are exact, and what to hide."""

    def event_reader(self, injection: Injection) -> EventReader:
        """A reader for one streamed answer, hiding what ``injection`` asked for."""

    def body_reader(self) -> BodyReader:
        """A reader for a non-streamed answer."""


@dataclass(frozen=True, slots=True)
class ApiChoice:
    """A route that serves several APIs, each request going to the one its body is for
    (SageMaker's ``/invocations``): chosen from the decoded body before anything is sent, so
    that the request is read, changed and metered as that API's."""

    routes: tuple[str, ...]
    choose: Callable[[dict[str, Any]], Api]


# A form's fields as read on the way: the last value of each, None when one is there but
# cannot be read (a file part, an overlong value).
FormFields = Mapping[str, bytes | None]


class FormApi(Api, Protocol):
    """An API whose requests are multipart forms (an audio file and a few small fields): the
    body streams upstream as it arrives, never held whole, and only ``form_fields`` are read
    from it on the way. What the proxy asks the upstream for goes in as fields at the form's
    end. ``read_request`` and ``prepare`` are for JSON and never asked."""

    streamed_body: bool  # True; what tells it from a JSON API (streams_its_body)
    form_fields: frozenset[str]

    def read_form(self, fields: FormFields, readable: bool) -> RequestFacts:
        """What a form asks for, from its ``form_fields``; ``readable`` is False when the
        form could not be followed the way the upstream reads it. Never raises."""

    def prepare_form(
        self, facts: RequestFacts, mode: UsageMode
    ) -> tuple[tuple[tuple[str, str], ...], Injection]:
        """The fields (name, value) to add so that the upstream's counts are exact, and
        what to hide."""


def streams_its_body(api: Api) -> TypeGuard[FormApi]:
    """Whether ``api``'s requests stream upstream as they arrive (forms) rather than being
    read whole first (JSON)."""
    return getattr(api, "streamed_body", False) is True


def parse_request(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object, or raise BadRequestBody."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip(WHITESPACE):
            raise BadRequestBody("Request body is empty") from None
        raise BadRequestBody(f"Request body is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRequestBody("Request body must be a JSON object")
    return obj


def requested_model(obj: dict[str, Any]) -> object:
    """The model a decoded request asks for: every API the proxy meters names it in the
    body's top-level "model" member (OpenAI's, Anthropic's, Cohere's v2, vLLM's pooling and
    token APIs). Any JSON value, or None: the recorder decides what it counts under."""
    return obj.get("model")


_VLLM_FINISHED_REASONS = frozenset(FinishedReason)
# The APIs' names for a normal finish that vLLM's engine counts as "stop".
_STOP_ALIASES = frozenset({"tool_calls", "function_call", "eos", "stop_sequence", "end_turn"})
_TIDY_REASON = re.compile(r"^[a-z_]{1,32}$")


def vllm_finished_reason(word: str | None) -> str:
    """An API's finish word (or none) as vLLM's engine counts it: one of its reasons, an
    unknown but tidy word as it is (a newer engine's), anything else as ``stop``; always a
    safe label value."""
    if word is None or word in _STOP_ALIASES:
        return "stop"
    if word in _VLLM_FINISHED_REASONS or _TIDY_REASON.match(word):
        return word
    return "stop"
