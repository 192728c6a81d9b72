"""Request and non-streaming response facts, and the usage request the proxy adds upstream."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from metrics_proxy.sse import Usage

__all__ = [
    "NO_INJECTION",
    "BadRequestBody",
    "Injection",
    "RequestFacts",
    "ResponseFacts",
    "UsageMode",
    "add_usage_request",
    "lax_bool",
    "parse_request",
    "request_facts",
    "response_facts",
    "strip_usage_field",
]

_WHITESPACE = b" \t\r\n"


class BadRequestBody(ValueError):
    """A request body the proxy cannot read; the message is safe to show and never echoes it."""


def parse_request(body: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object, or raise BadRequestBody."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip(_WHITESPACE):
            raise BadRequestBody("Request body is empty") from None
        raise BadRequestBody(f"Request body is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise BadRequestBody("Request body must be a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
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


_LAX_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_LAX_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(value: object) -> bool | None:
    """A JSON value as vLLM reads its `Optional[bool] = False` request fields (`stream`,
    `include_usage`, `continuous_usage_stats`); None when vLLM refuses it.

    pydantic v2 in lax mode takes booleans, the numbers 0 and 1 (1.0 too), and a few words
    in any ASCII case, untrimmed; null (or no member at all) means the default, False.
    """
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, int | float):  # booleans are out of the way
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str) and value.isascii():  # pydantic folds ASCII case only
        word = value.lower()
        return True if word in _LAX_TRUE else False if word in _LAX_FALSE else None
    return None


def request_facts(obj: dict[str, Any]) -> RequestFacts:
    """Read the facts of a decoded request; never raises."""
    stream = lax_bool(obj.get("stream"))
    include, continuous = _usage_options(obj.get("stream_options"))
    n = obj.get("n")
    return RequestFacts(
        stream=stream is True,
        wants_usage=include is True,
        wants_continuous_usage=continuous is True,
        n=n if type(n) is int and n >= 1 else 1,
        max_tokens=_positive(obj.get("max_completion_tokens")) or _positive(obj.get("max_tokens")),
        refused=stream is None or include is None or continuous is None,
    )


def _usage_options(options: object) -> tuple[bool | None, bool | None]:
    """include_usage and continuous_usage_stats as vLLM reads them; None where it refuses."""
    if options is None:
        return False, False
    if type(options) is not dict:
        return None, None
    return lax_bool(options.get("include_usage")), lax_bool(options.get("continuous_usage_stats"))


def _positive(value: object) -> int | None:
    return value if type(value) is int and value > 0 else None


class UsageMode(StrEnum):
    """How much usage the proxy asks a streaming upstream for, whatever the client asked."""

    NONE = "none"
    INCLUDE = "include"  # stream_options.include_usage: one usage-only chunk at the end
    CONTINUOUS = "continuous"  # and vLLM's continuous_usage_stats: usage on every chunk


@dataclass(frozen=True, slots=True)
class Injection:
    """What the proxy must hide from the client because it asked upstream for it.

    strip_final_usage: drop the final usage-only chunk (`choices: []`).
    strip_chunk_usage: remove `usage` from chunks with choices (strip_usage_field): vLLM's
    continuous_usage_stats puts counts there and OpenAI puts `null` there once include_usage
    is on, while the client asked for per-chunk usage (both flags set) only when this is False.
    """

    strip_final_usage: bool
    strip_chunk_usage: bool


NO_INJECTION = Injection(strip_final_usage=False, strip_chunk_usage=False)
_INCLUDE_MEMBER = b'"stream_options":{"include_usage":true}'
_CONTINUOUS_MEMBER = b'"stream_options":{"include_usage":true,"continuous_usage_stats":true}'


def add_usage_request(
    body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
) -> tuple[bytes, Injection]:
    """The body to send upstream so that it reports usage, and what to hide from the client.

    `obj` and `facts` are the decoded `body` and its facts. When nothing needs adding, the
    very same `body` object comes back with NO_INJECTION. Otherwise the client's bytes are
    kept and only the `stream_options` member is (re)written, as the object's first member:
    re-serialising would turn integers beyond 64 bits into floats and fail past orjson's
    dumps depth limit. vLLM honours continuous_usage_stats only with include_usage, so a
    client that set the first alone gets it switched on by INCLUDE as well. Options the
    proxy does not change keep the client's spelling, which vLLM reads as the client meant
    it (`"continuous_usage_stats": 0` stays off); a request vLLM will refuse goes as it is.
    """
    if not facts.stream or facts.refused or mode is UsageMode.NONE:
        return body, NO_INJECTION
    continuous = mode is UsageMode.CONTINUOUS or facts.wants_continuous_usage
    client_chunk_usage = facts.wants_usage and facts.wants_continuous_usage
    if facts.wants_usage and (client_chunk_usage or mode is UsageMode.INCLUDE):
        return body, NO_INJECTION
    injection = Injection(
        strip_final_usage=not facts.wants_usage, strip_chunk_usage=not client_chunk_usage
    )
    if "stream_options" not in obj:
        member = _CONTINUOUS_MEMBER if continuous else _INCLUDE_MEMBER
        rest = body
    else:
        options = obj["stream_options"]
        merged = dict(options) if type(options) is dict else {}
        merged["include_usage"] = True
        if continuous:
            merged["continuous_usage_stats"] = True
        try:
            member = b'"stream_options":' + orjson.dumps(merged)
        except orjson.JSONEncodeError:
            return body, NO_INJECTION  # absurd client options: forward them untouched
        rest = _drop_member(body, b"stream_options")
        if rest is body:
            return body, NO_INJECTION  # not a top-level member after all: cannot rewrite it
    opening = _skip_whitespace(rest, 0)
    if rest[opening : opening + 1] != b"{":
        return body, NO_INJECTION
    after = opening + 1
    separator = b"" if rest.startswith(b"}", _skip_whitespace(rest, after)) else b","
    return b"".join((rest[:after], member, separator, rest[after:])), injection


def strip_usage_field(event_data: bytes) -> bytes:
    """One chunk's JSON without its top-level `usage` member, every other byte kept.

    Returns `event_data` itself when there is no such member or the bytes are not an object.
    """
    return _drop_member(event_data, b"usage")


# A JSON string (an unterminated one runs to the end, so scanning stays linear) or a
# structural byte; scalars need no token since they never contain any of these.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{},]', re.S)
_SCALAR = re.compile(rb"[^\s,\]}]+")


def _drop_member(data: bytes, key: bytes) -> bytes:
    """data without its top-level member named key and one adjacent comma, or data itself."""
    quoted = b'"' + key + b'"'
    if quoted not in data:
        return data  # the common case, cheaply (a name spelled with \u escapes is missed)
    dropped = _drop_last_member(data, quoted)
    return _scan_drop_member(data, quoted) if dropped is None else dropped


def _drop_last_member(data: bytes, quoted: bytes) -> bytes | None:
    """The shape vLLM writes (usage last), read from the end; None when not plainly so.

    In valid JSON, `quoted` preceded by `,` or `{` (not by the backslash of an escaped quote)
    and followed by `:` is a member name; when its value runs up to the final `}`, it is the
    last member of the top-level object.
    """
    close = _skip_whitespace_back(data, len(data)) - 1
    if close < 1 or data[close] != 0x7D:  # }
        return None
    found = data.rfind(quoted, 0, close)
    if found < 1:
        return None
    before = _skip_whitespace_back(data, found)
    colon = _skip_whitespace(data, found + len(quoted))
    if before < 1 or data[before - 1] not in b",{" or not data.startswith(b":", colon):
        return None
    end = _value_end(data, _skip_whitespace(data, colon + 1))
    if end < 0 or _skip_whitespace(data, end) != close:
        return None
    if data[before - 1] == 0x2C:  # ,
        found = before - 1
    return data[:found] + data[end:]


def _value_end(data: bytes, pos: int) -> int:
    """Where the JSON value starting at pos ends, or -1."""
    if data.startswith((b"{", b"["), pos):
        depth = 0
        for token in _TOKEN.finditer(data, pos):
            char = data[token.start()]
            if char == 0x7B or char == 0x5B:  # { [
                depth += 1
            elif char == 0x7D or char == 0x5D:  # } ]
                depth -= 1
                if depth == 0:
                    return token.end()
        return -1
    match = (_TOKEN if data.startswith(b'"', pos) else _SCALAR).match(data, pos)
    return -1 if match is None else match.end()


def _scan_drop_member(data: bytes, quoted: bytes) -> bytes:
    """The general case: walk the top-level object for the first member named by quoted."""
    opening = _skip_whitespace(data, 0)
    if data[opening : opening + 1] != b"{":
        return data
    depth = 0
    expect_key = False  # the next string at depth 1 is a member name
    found = -1
    for token in _TOKEN.finditer(data, opening):
        pos = token.start()
        char = data[pos]
        if char == 0x22:  # "
            if expect_key:
                if found < 0 and token.end() - pos == len(quoted) and data.startswith(quoted, pos):
                    found = pos
                expect_key = False
        elif char == 0x2C:  # ,
            if depth == 1:
                if found >= 0:
                    return data[:found] + data[_skip_whitespace(data, pos + 1) :]
                expect_key = True
        elif char == 0x7B or char == 0x5B:  # { [
            depth += 1
            expect_key = depth == 1
        else:  # } ]
            depth -= 1
            if depth == 0:
                if found < 0:
                    return data
                # The last member: its comma is the one before it, if any.
                before = _skip_whitespace_back(data, found)
                if data[before - 1] == 0x2C:
                    found = before - 1
                return data[:found] + data[_skip_whitespace_back(data, pos) :]
    return data


def _skip_whitespace(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size and data[pos] in _WHITESPACE:
        pos += 1
    return pos


def _skip_whitespace_back(data: bytes, pos: int) -> int:
    while pos > 0 and data[pos - 1] in _WHITESPACE:
        pos -= 1
    return pos


@dataclass(frozen=True, slots=True)
class ResponseFacts:
    """What a non-streaming completion or chat response tells the meters."""

    usage: Usage | None
    finish_reason: str | None  # the last non-null choices[*].finish_reason
    choices: int


_NO_RESPONSE_FACTS = ResponseFacts(None, None, 0)


def response_facts(body: bytes) -> ResponseFacts:
    """Read a whole response body; never raises (anything odd reads as no facts)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NO_RESPONSE_FACTS
    if type(obj) is not dict:
        return _NO_RESPONSE_FACTS
    choices = obj.get("choices")
    finish_reason = None
    count = 0
    if type(choices) is list:
        count = len(choices)
        for choice in choices:
            reason = choice.get("finish_reason") if type(choice) is dict else None
            if type(reason) is str:
                finish_reason = reason
    return ResponseFacts(Usage.from_json(obj.get("usage")), finish_reason, count)
