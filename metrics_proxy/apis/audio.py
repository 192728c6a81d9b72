"""OpenAI's audio transcriptions and translations (``/v1/audio/transcriptions``,
``/v1/audio/translations``) as vLLM serves them: a multipart form in (the audio file and
fields), chat-like chunks out (``delta.content``, usage on a last ``choices: []`` chunk when
asked). Pure: no I/O.

The usage switches are form fields (``stream_include_usage``, ``stream_continuous_usage_stats``),
read by pydantic as the JSON APIs' booleans are, and refused (400) without ``stream``. A
non-streamed answer reports no tokens: a transcription's usage is ``{"type": "duration",
"seconds": N}``, a translation has none, and neither is turned into a count.
"""

from __future__ import annotations

from typing import Any

from metrics_proxy.apis.base import (
    NO_INJECTION,
    BodyReader,
    EventReader,
    FormFields,
    Injection,
    RequestFacts,
    UsageMode,
)
from metrics_proxy.apis.body_scan import ResponseReader
from metrics_proxy.apis.chat import carries_output
from metrics_proxy.apis.openai import OpenAIApi, lax_bool, response_facts

__all__ = ["AUDIO", "AudioApi", "form_facts", "form_usage_request"]

_STREAM = "stream"
_INCLUDE = "stream_include_usage"
_CONTINUOUS = "stream_continuous_usage_stats"
_MAX_TOKENS = "max_completion_tokens"
_MODEL = "model"
FORM_FIELDS = frozenset({_STREAM, _INCLUDE, _CONTINUOUS, _MAX_TOKENS, _MODEL})

# The answer's chunks are chat's, the proxy's usage request undone the same way.
_CHUNKS = OpenAIApi((), carries_output)
# A JSON body is not what these routes take (vLLM answers 422): it asks for nothing.
_NOTHING_ASKED = RequestFacts(
    stream=False, wants_usage=False, wants_continuous_usage=False, n=1, max_tokens=None
)


def _form_bool(fields: FormFields, name: str) -> bool | None:
    """A field as vLLM reads its ``bool | None = False`` form fields; None when refused.
    FastAPI takes an empty form value for the default."""
    if name not in fields:
        return False
    value = fields[name]
    if value is None:
        return None  # a file part or an overlong value: no boolean
    return lax_bool(value.decode("latin-1")) if value else False


def _positive(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():  # bytes.isdigit: ASCII digits only
        return None
    number = int(value)
    return number if number > 0 else None


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def form_facts(fields: FormFields, readable: bool) -> RequestFacts:
    """What a form asks for; never raises. A request has one output (the routes' ``n`` is a
    beam width, and vLLM samples one)."""
    stream = _form_bool(fields, _STREAM)
    include = _form_bool(fields, _INCLUDE)
    continuous = _form_bool(fields, _CONTINUOUS)
    options_without_stream = (include is True or continuous is True) and stream is not True
    return RequestFacts(
        stream=stream is True,
        wants_usage=include is True,
        wants_continuous_usage=continuous is True,
        n=1,
        max_tokens=_positive(fields.get(_MAX_TOKENS)),
        refused=not readable or None in (stream, include, continuous) or options_without_stream,
        model=_text(fields.get(_MODEL)),
    )


def form_usage_request(
    facts: RequestFacts, mode: UsageMode
) -> tuple[tuple[tuple[str, str], ...], Injection]:
    """The fields to add so that a stream reports usage, and what to hide from the client:
    the same rules as chat's ``stream_options`` (openai.add_usage_request), as fields. Added
    at the form's end they win over the client's, as the last of repeated fields does."""
    if not facts.stream or facts.refused or mode is UsageMode.NONE:
        return (), NO_INJECTION
    client_chunk_usage = facts.wants_usage and facts.wants_continuous_usage
    if facts.wants_usage and (client_chunk_usage or mode is UsageMode.INCLUDE):
        return (), NO_INJECTION
    fields: tuple[tuple[str, str], ...] = ((_INCLUDE, "true"),)
    if mode is UsageMode.CONTINUOUS and not facts.wants_continuous_usage:
        fields += ((_CONTINUOUS, "true"),)
    injection = Injection(
        strip_final_usage=not facts.wants_usage, strip_chunk_usage=not client_chunk_usage
    )
    return fields, injection


class AudioApi:
    """Transcriptions and translations: the same form, the same chunks."""

    __slots__ = ("routes",)
    answer_is_output = False
    error_event_name: str | None = None  # errors in OpenAI's shape
    streamed_body = True
    form_fields = FORM_FIELDS

    def __init__(self, routes: tuple[str, ...]) -> None:
        self.routes = routes

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        return _NOTHING_ASKED

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return body, NO_INJECTION

    def read_form(self, fields: FormFields, readable: bool) -> RequestFacts:
        return form_facts(fields, readable)

    def prepare_form(
        self, facts: RequestFacts, mode: UsageMode
    ) -> tuple[tuple[tuple[str, str], ...], Injection]:
        return form_usage_request(facts, mode)

    def event_reader(self, injection: Injection) -> EventReader:
        return _CHUNKS.event_reader(injection)

    def body_reader(self) -> BodyReader:
        # A large (verbose_json) answer has neither `usage` nor `choices` at its top level,
        # which is what the scan finds: no usage, honestly.
        return ResponseReader(response_facts)


AUDIO = AudioApi(("/v1/audio/transcriptions", "/v1/audio/translations"))
