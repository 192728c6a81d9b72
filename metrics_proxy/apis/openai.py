"""What chat and completions (OpenAI's two streaming APIs, as vLLM serves them) share: how a
request asks for usage, how the proxy asks for it in the client's stead and hides it again,
which events carry output, where usage and the finish reason are. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from metrics_proxy.apis.base import (
    NO_INJECTION,
    BodyReader,
    EngineTimes,
    EventFacts,
    EventReader,
    Injection,
    RequestFacts,
    ResponseFacts,
    Usage,
    UsageMode,
)
from metrics_proxy.apis.body_scan import ResponseReader
from metrics_proxy.json_members import WHITESPACE, drop_member, skip_whitespace

__all__ = [
    "OpenAIApi",
    "add_usage_request",
    "lax_bool",
    "request_facts",
    "response_facts",
    "strip_usage_field",
]

# Whether one choice of a streamed chunk carries generated output (text, reasoning, tools).
OutputTest = Callable[[dict[str, Any]], bool]


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
        strip_final_usage=not facts.wants_usage,
        # Counts on every chunk are the proxy's doing only when it asked for them.
        strip_chunk_usage=continuous and not client_chunk_usage,
        strip_null_usage=not facts.wants_usage,
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
        rest = _drop_every(body, b"stream_options")
        if rest is body:
            return body, NO_INJECTION  # not a top-level member after all: cannot rewrite it
    opening = skip_whitespace(rest, 0)
    if rest[opening : opening + 1] != b"{":
        return body, NO_INJECTION
    after = opening + 1
    separator = b"" if rest.startswith(b"}", skip_whitespace(rest, after)) else b","
    return b"".join((rest[:after], member, separator, rest[after:])), injection


def _drop_every(data: bytes, key: bytes) -> bytes:
    """data without any top-level member named key: JSON parsers keep the last of duplicate
    members (orjson, and vLLM's), so a second one would override the proxy's."""
    while (dropped := drop_member(data, key)) is not data:
        data = dropped
    return data


def strip_usage_field(event_data: bytes) -> bytes:
    """One chunk's JSON without its top-level `usage` member, every other byte kept.

    Returns `event_data` itself when there is no such member or the bytes are not an object.
    """
    return drop_member(event_data, b"usage")


# Shared answers for the shapes nearly every chunk has: building a frozen dataclass costs
# more than the orjson.loads before it.
_DONE = EventFacts(True, (), None, None, False, False)
_NOTHING = EventFacts(False, (), None, None, False, False)
_OUTPUT_0 = EventFacts(False, (0,), None, None, False, False)


def chunk_facts(carries_output: OutputTest, payload: bytes) -> EventFacts | None:
    """Facts of one chunk's data; None when it is neither a JSON object nor `[DONE]`."""
    if payload == b"[DONE]":
        return _DONE
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _DONE if payload.strip() == b"[DONE]" else None
    if type(obj) is not dict:
        return None
    choices = obj.get("choices")
    outputs: tuple[int, ...] = ()
    finish_reason = None
    if type(choices) is list:
        for choice in choices:
            if type(choice) is not dict:
                continue
            reason = choice.get("finish_reason")
            if type(reason) is str:
                finish_reason = reason
            if carries_output(choice):
                index = choice.get("index", 0)
                outputs += (index if type(index) is int else 0,)
    usage_key = "usage" in obj
    usage = Usage.from_json(obj["usage"]) if usage_key else None
    error = "error" in obj
    if not usage_key and finish_reason is None and not error:
        if not outputs:
            return _NOTHING
        if outputs == (0,):
            return _OUTPUT_0
    usage_only = usage is not None and choices == []
    engine = EngineTimes.from_json(obj.get("metrics")) if usage_key else None
    return EventFacts(False, outputs, finish_reason, usage, usage_only, error, usage_key, engine)


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
    engine = EngineTimes.from_json(obj.get("metrics"))
    return ResponseFacts(Usage.from_json(obj.get("usage")), finish_reason, count, engine)


class _ChunkReader:
    """Reads chat or completion chunks; each says all it has to say on its own."""

    __slots__ = ("_counts_on_every_chunk", "_injection", "_server_sends_usage", "facts")

    def __init__(self, carries_output: OutputTest, injection: Injection) -> None:
        # Called for every streamed event: a partial costs no Python frame of its own.
        self.facts: Callable[[bytes], EventFacts | None] = partial(chunk_facts, carries_output)
        self._injection = injection
        self._server_sends_usage = False
        self._counts_on_every_chunk = False  # counts seen on a chunk that finishes nothing

    def undo(self, data: bytes, facts: EventFacts) -> bytes | None:
        """Take out what the proxy's request caused, nothing else: the usage-only chunk
        include_usage asked for, `usage` counts continuous_usage_stats put on every chunk,
        OpenAI's `"usage": null`. Counts on a chunk the proxy did not ask for are the
        server's own (transformers serve on its finish chunk; vLLM with
        --enable-force-include-usage on every chunk, and then its usage chunk too): they
        pass, and so does the usage chunk of such a server."""
        injection = self._injection
        if facts.usage_only:
            drop = injection.strip_final_usage and not self._server_sends_usage
            return b"" if drop else None
        if facts.usage is None:  # null (or unreadable): OpenAI's mark of include_usage
            strip = injection.strip_null_usage or injection.strip_chunk_usage
        elif facts.finish_reason is None:
            self._counts_on_every_chunk = True
            strip = injection.strip_chunk_usage
        else:
            # Counts on a finish chunk are continuous_usage_stats' when the chunks before it
            # had them too; a server that puts them on its finish chunk alone (transformers
            # serve) sends them whatever the proxy asked.
            strip = injection.strip_chunk_usage and self._counts_on_every_chunk
        if facts.usage is not None and not strip and not injection.strip_chunk_usage:
            self._server_sends_usage = True
        return strip_usage_field(data) if strip else None

    def holds(self, facts: EventFacts) -> bool:
        """A finish chunk waits for the next chunk when the proxy will drop the usage chunk
        it asked for: include_usage moves vLLM's `system_fingerprint` (and per-request
        `metrics`) from the finish chunks to that usage chunk, and back they go."""
        return (
            self._injection.strip_final_usage
            and not self._server_sends_usage
            and not facts.usage_only
        )

    def release(
        self, held: list[bytes], facts: EventFacts | None, data: bytes | None
    ) -> list[bytes] | None:
        if facts is not None and facts.finish_reason is not None and not facts.usage_only:
            return None  # another choice's finish chunk: they all wait for the usage chunk
        if facts is None or data is None or not facts.usage_only:
            return held
        moved = _moved_members(data)
        return [_with_members(chunk, moved) for chunk in held] if moved else held


# What vLLM moves from the finish chunks to the usage chunk once include_usage is on.
_MOVED_TO_USAGE_CHUNK = ("system_fingerprint", "metrics")


def _moved_members(usage_chunk: bytes) -> list[tuple[bytes, bytes]]:
    """The members include_usage moved onto the usage chunk, as (name, JSON value)."""
    try:
        obj = orjson.loads(usage_chunk)
    except orjson.JSONDecodeError:
        return []
    if type(obj) is not dict:
        return []
    return [
        (name.encode(), orjson.dumps(obj[name]))
        for name in _MOVED_TO_USAGE_CHUNK
        if obj.get(name) is not None
    ]


def _with_members(chunk: bytes, members: list[tuple[bytes, bytes]]) -> bytes:
    """The chunk with each member it lacks added as its last, every other byte kept."""
    end = chunk.rstrip(WHITESPACE)
    if not end.endswith(b"}"):
        return chunk
    added = b"".join(
        b',"' + name + b'":' + value for name, value in members if b'"' + name + b'"' not in chunk
    )
    return end[:-1] + added + b"}" + chunk[len(end) :] if added else chunk


class OpenAIApi:
    """Chat or completions: the same JSON around a different choice shape."""

    __slots__ = ("_carries_output", "routes")
    answer_is_output = False
    error_event_name: str | None = None

    def __init__(self, routes: tuple[str, ...], carries_output: OutputTest) -> None:
        self.routes = routes
        self._carries_output = carries_output

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        return request_facts(obj)

    def prepare(
        self, body: bytes, obj: dict[str, Any], facts: RequestFacts, mode: UsageMode
    ) -> tuple[bytes, Injection]:
        return add_usage_request(body, obj, facts, mode)

    def event_reader(self, injection: Injection) -> EventReader:
        return _ChunkReader(self._carries_output, injection)

    def body_reader(self) -> BodyReader:
        return ResponseReader(response_facts)
