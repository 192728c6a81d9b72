"""APIs that take a JSON request and give one JSON answer, never streamed: the usage is where
the answer puts it, and there is no finish word (vLLM finishes such requests as ``stop``).
vLLM's pooling APIs are of this kind, and so are two routes that generate without streaming:
the Decisions API and generative scoring. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
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
from metrics_proxy.apis.openai import chunk_facts

__all__ = [
    "DECISIONS",
    "GENERATIVE_SCORING",
    "NOT_STREAMED",
    "JsonAnswerApi",
    "UsageReader",
    "answer_facts",
    "input_output_usage",
    "token_count",
]

# Reads an answer's usage member, decoded; None when it is absent or says no counts.
UsageReader = Callable[[object], Usage | None]

# Nothing in such a request streams or asks for usage; n and max_tokens are not its words.
NOT_STREAMED = RequestFacts(
    stream=False, wants_usage=False, wants_continuous_usage=False, n=1, max_tokens=None
)
_NO_FACTS = ResponseFacts(None, None, 0)
# Counts written as JSON floats are taken up to here, where floats still hold every integer.
_LARGEST_FLOAT_COUNT = 2.0**53


def token_count(value: object) -> int | None:
    """A token count: a non-negative integer, also written as a float (``12.0``, as pydantic
    writes an int held in a float field); None for anything else."""
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float and 0 <= value < _LARGEST_FLOAT_COUNT and value.is_integer():
        return int(value)
    return None


def input_output_usage(value: object) -> Usage | None:
    """Usage as the Responses-style APIs write it (``input_tokens``, ``output_tokens``)."""
    if type(value) is not dict:
        return None
    prompt = token_count(value.get("input_tokens"))
    completion = token_count(value.get("output_tokens", 0))
    return None if prompt is None or completion is None else Usage(prompt, completion)


def answer_facts(usage_member: str, read_usage: UsageReader, body: bytes) -> ResponseFacts:
    """A whole answer's usage; anything odd reads as none."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NO_FACTS
    if type(obj) is not dict:
        return _NO_FACTS
    return ResponseFacts(read_usage(obj.get(usage_member)), None, 0)


def _carries_no_output(choice: dict[str, Any]) -> bool:
    return False


class _UntouchedEvents(NothingHeld):
    """These upstreams never stream. Should one answer with events all the same, they pass
    as they are, and only ``[DONE]``, an error and usage are read from them."""

    __slots__ = ()

    def facts(self, data: bytes) -> EventFacts | None:
        return chunk_facts(_carries_no_output, data)

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        return None  # the proxy asked for nothing


class JsonAnswerApi:
    """One JSON answer per request, its usage in the top-level ``usage_member``, read by
    ``read_usage``; with ``answer_is_output`` the answer is the request's one output."""

    __slots__ = ("_read_usage", "_usage_member", "answer_is_output", "routes")
    error_event_name: str | None = None  # errors in OpenAI\'s shape

    def __init__(
        self,
        routes: tuple[str, ...],
        *,
        answer_is_output: bool,
        read_usage: UsageReader,
        usage_member: str = "usage",
    ) -> None:
        self.routes = routes
        self.answer_is_output = answer_is_output
        self._read_usage = read_usage
        self._usage_member = usage_member

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        return NOT_STREAMED

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return body, NO_INJECTION  # the answer reports usage anyway

    def event_reader(self, injection: Injection) -> EventReader:
        return _UntouchedEvents()

    def body_reader(self) -> BodyReader:
        # A large answer (many embeddings, say) is scanned for the same member, never kept.
        member, read = self._usage_member, self._read_usage
        return ResponseReader(
            partial(answer_facts, member, read),
            partial(ResponseScanner, usage_member=member, read_usage=read),
        )


# The OpenAI Decisions API: answers to questions about an input, usage in Responses' words.
DECISIONS = JsonAnswerApi(("/v1/decisions",), answer_is_output=False, read_usage=input_output_usage)
# vLLM's generative scoring: the probability of label tokens after each query and item.
GENERATIVE_SCORING = JsonAnswerApi(
    ("/generative_scoring",), answer_is_output=False, read_usage=Usage.from_json
)
