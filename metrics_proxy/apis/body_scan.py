"""The facts of a non-streamed answer, read as its bytes pass: sans-I/O, never keeping it.

Small bodies, nearly all of them, are kept and decoded whole. Larger ones are scanned: vLLM
writes `usage` before `prompt_logprobs`, which can run to hundreds of megabytes, so reading
the tail alone would not do, and decoding the whole blocks the event loop for seconds and
holds gigabytes. The scanner follows JSON strings (escapes included) and nesting across
chunks, so only the top-level `usage` member and `choices[*].finish_reason` can match.
Everything else is skipped by regular expressions that run in C over whole strings and whole
balanced containers, never byte by byte in Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import orjson

from metrics_proxy.apis.base import BodyReader, ResponseFacts, Usage

__all__ = ["ResponseReader", "ResponseScanner"]

_NO_FACTS = ResponseFacts(None, None, 0)
# Bodies up to this size (nearly all) are kept and decoded whole, which is fastest; the
# scanner's cost per token only pays off past it, where decoding would block for long.
_DECODE_LIMIT = 64 * 1024

# The most bytes kept of one value: longer ones read as absent. Nothing else is kept.
_MAX_NAME = 32  # longer member names are none of the three the scanner looks for
_MAX_REASON = 64  # finish reasons are short words (metric labels take at most 32 bytes)
_MAX_USAGE = 64 * 1024  # a usage object takes a few hundred bytes
# Past this depth the scanner gives up: no answer nests so deep (vLLM's go 9 levels deep),
# and every level deeper than _BALANCED follows costs a rescan. Levels it matches whole are
# not counted: where the scan stops, up to a dozen levels deeper, depends on the chunks.
_MAX_DEPTH = 64

_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
# The rest of a string after its opening quote, up to its closing quote or the chunk's end;
# it stops before a backslash that ends the chunk, whose escaped byte comes in the next one.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S)
_SCALAR = re.compile(rb'[^\s,:\[\]{}"]*+')  # true, false, null or a number (or its start)
_SPACE = re.compile(rb"[ \t\r\n]*+")


def _run_end(pattern: re.Pattern[bytes], chunk: bytes, pos: int) -> int:
    """Where the run of `pattern` (which also matches nothing) starting at pos ends."""
    match = pattern.match(chunk, pos)
    assert match is not None
    return match.end()


def _balanced(levels: int) -> bytes:
    """A run of JSON text whose brackets balance within `levels` of nesting, strings taken
    whole (their brackets do not count). Possessive: a failed match never backtracks."""
    atoms = [_STRING, rb'[^"\[\]{}]++']
    if levels:
        atoms.append(rb"[\[{]" + _balanced(levels - 1) + rb"[\]}]")
    return b"(?:" + b"|".join(atoms) + b")*+"


# vLLM nests 6 levels below a choice's members (logprobs.content[].top_logprobs[].bytes[]).
# Deeper text is still followed exactly, at one Python step (and a rescan) per level past.
_BALANCED = re.compile(_balanced(12), re.S)

_QUOTE, _COMMA, _COLON = 0x22, 0x2C, 0x3A
_OPEN_BRACE, _CLOSE_BRACE, _OPEN_BRACKET, _CLOSE_BRACKET = 0x7B, 0x7D, 0x5B, 0x5D
_OPENERS = b"[{"
_NOT_A_VALUE = b",:]}"

# What the next token at a watched level must be.
_VALUE, _VALUE_OR_CLOSE, _NAME, _NAME_OR_CLOSE, _NAME_SEPARATOR, _NEXT, _END = range(7)
# What the value being read is, and why its bytes are kept.
_IN_STRING, _IN_CONTAINER, _IN_SCALAR = range(3)
_SKIP, _KEEP_NAME, _KEEP_REASON, _KEEP_USAGE, _KEEP_TOP_REASON, _KEEP_MEMBER = range(6)
# By role; names and reasons are quoted. A member kept for an API is as small as a usage object.
_KEEP_LIMITS = (0, _MAX_NAME + 2, _MAX_REASON + 2, _MAX_USAGE, _MAX_REASON + 2, _MAX_USAGE)


class ResponseScanner:
    """Feed it a response body chunk by chunk, then read `facts()`.

    Three levels are watched, token by token: the top-level object (depth 1), the `choices`
    array (depth 2) and each choice (depth 3). Any other value is skipped whole, its bytes
    kept only for the top-level `usage`, a choice's `finish_reason` and member names (each
    within a bound). Like orjson, the last of duplicate members wins. Skipped values are not
    validated, but a body whose watched structure is not JSON reads as no facts.

    APIs of another shape name the top-level member that holds their usage and how to read
    it (``usage_member``, ``read_usage``), and the top-level member holding their finish
    word, if any (``reason_member``). They may also name other top-level ``members`` they
    read: those are kept (each within the bound of a usage object) for `members()`.
    """

    __slots__ = (
        "_choice_reason",
        "_choices",
        "_depth",
        "_escaped",
        "_expect",
        "_failed",
        "_floor",
        "_in_string",
        "_kept",
        "_kept_size",
        "_members",
        "_name",
        "_read_usage",
        "_reason",
        "_reason_member",
        "_role",
        "_usage",
        "_usage_member",
        "_value",
        "_wanted",
    )

    def __init__(
        self,
        *,
        usage_member: str = "usage",
        read_usage: Callable[[object], Usage | None] = Usage.from_json,
        reason_member: str | None = None,
        members: tuple[str, ...] = (),
    ) -> None:
        self._usage_member = usage_member
        self._read_usage = read_usage
        self._reason_member = reason_member
        self._wanted = frozenset(members)
        self._members: dict[str, object] = {}
        self._depth = 0  # containers open
        self._expect = _VALUE
        self._failed = False
        self._value: int | None = None  # the kind of the value being read, when inside one
        self._floor = 0  # the depth at which the container being skipped ends
        self._in_string = False
        self._escaped = False  # the last chunk ended with a string's backslash
        self._role = _SKIP
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._name: str | None = None  # the member name at the current watched level
        self._choice_reason: str | None = None
        self._reason: str | None = None
        self._usage: Usage | None = None
        self._choices = 0

    def feed(self, chunk: bytes) -> None:
        """Scan the next bytes of the body."""
        pos, size = 0, len(chunk)
        while pos < size and not self._failed:
            if self._value is not None:
                pos = self._continue_value(chunk, pos)
                continue
            pos = _run_end(_SPACE, chunk, pos)
            if pos < size:
                pos = self._token(chunk, pos)

    def facts(self) -> ResponseFacts:
        """What the body said; no facts unless it was one whole JSON object."""
        if self._failed or self._expect != _END:
            return _NO_FACTS
        return ResponseFacts(self._usage, self._reason, self._choices)

    def members(self) -> dict[str, object] | None:
        """The wanted top-level members seen, decoded (None where a value outgrew its bound);
        None unless the body was one whole JSON object."""
        if self._failed or self._expect != _END:
            return None
        return self._members

    def _token(self, chunk: bytes, pos: int) -> int:
        """One token at a watched level, at pos; return where the scan goes on."""
        byte = chunk[pos]
        expect = self._expect
        if expect == _NEXT:
            if byte != _COMMA:
                return self._close(byte, pos)
            self._expect = _VALUE if self._depth == 2 else _NAME
            return pos + 1
        if expect in (_NAME, _NAME_OR_CLOSE):
            if byte == _QUOTE:
                return self._start_value(chunk, pos, _KEEP_NAME)
            return self._close(byte, pos) if expect == _NAME_OR_CLOSE else self._fail()
        if expect == _NAME_SEPARATOR:
            if byte != _COLON:
                return self._fail()
            self._expect = _VALUE
            return pos + 1
        if expect == _VALUE_OR_CLOSE and byte == _CLOSE_BRACKET:
            return self._close(byte, pos)
        if expect == _END:
            return self._fail()
        return self._value_at(chunk, pos)

    def _value_at(self, chunk: bytes, pos: int) -> int:
        """A value starts at a watched level: go down into it, keep it or skip it."""
        byte = chunk[pos]
        depth = self._depth
        if depth == 0:  # the body itself
            return self._open(pos, 1) if byte == _OPEN_BRACE else self._fail()
        if depth == 2:  # an element of choices
            self._choices += 1
            if byte == _OPEN_BRACE:
                self._choice_reason = None
                return self._open(pos, 3)
            return self._start_value(chunk, pos, _SKIP)
        name = self._name
        if depth == 3:
            role = _KEEP_REASON if name == "finish_reason" else _SKIP
        elif name in self._wanted:
            role = _KEEP_MEMBER
        elif name == self._usage_member:
            role = _KEEP_USAGE
        elif name == self._reason_member:
            role = _KEEP_TOP_REASON
        elif name == "choices":
            self._reason = None
            self._choices = 0
            if byte == _OPEN_BRACKET:
                return self._open(pos, 2)
            role = _SKIP
        else:
            role = _SKIP
        return self._start_value(chunk, pos, role)

    def _open(self, pos: int, depth: int) -> int:
        self._depth = depth
        self._expect = _VALUE_OR_CLOSE if depth == 2 else _NAME_OR_CLOSE
        return pos + 1

    def _close(self, byte: int, pos: int) -> int:
        depth = self._depth
        if depth == 0 or byte != (_CLOSE_BRACKET if depth == 2 else _CLOSE_BRACE):
            return self._fail()
        if depth == 3 and self._choice_reason is not None:
            self._reason = self._choice_reason
        self._depth = depth - 1
        self._expect = _END if depth == 1 else _NEXT
        return pos + 1

    def _start_value(self, chunk: bytes, pos: int, role: int) -> int:
        byte = chunk[pos]
        if byte in _NOT_A_VALUE:
            return self._fail()
        self._role = role
        self._kept = []
        self._kept_size = 0
        if byte == _QUOTE:
            self._value = _IN_STRING
            self._in_string = True
        elif byte in _OPENERS:
            self._value = _IN_CONTAINER
            self._floor = self._depth
            self._depth += 1
        else:
            self._value = _IN_SCALAR
            return pos  # the scalar's first byte is read with the rest of it
        if role != _SKIP:
            self._keep(chunk, pos, pos + 1)
        return pos + 1

    def _continue_value(self, chunk: bytes, pos: int) -> int:
        """Read on in the current value; when it ends, act on it."""
        kind = self._value
        if kind == _IN_STRING:
            end = self._skip_string(chunk, pos)
            done = not self._in_string
        elif kind == _IN_CONTAINER:
            end = self._skip_nested(chunk, pos)
            done = self._depth == self._floor
        else:
            end = _run_end(_SCALAR, chunk, pos)
            done = end < len(chunk)  # a scalar ends at the first byte that is none of it
        if self._role != _SKIP:
            self._keep(chunk, pos, end)
        if done:
            self._value = None
            self._value_done()
        return end

    def _skip_string(self, chunk: bytes, pos: int) -> int:
        """Inside a string: the position past its closing quote, or the chunk's end."""
        if self._escaped:
            self._escaped = False
            pos += 1
        stop = _run_end(_STRING_REST, chunk, pos)
        if stop == len(chunk):
            return stop
        if chunk[stop] == _QUOTE:
            self._in_string = False
            return stop + 1
        self._escaped = True  # a backslash ends the chunk
        return stop + 1

    def _skip_nested(self, chunk: bytes, pos: int) -> int:
        """Inside a container being skipped: the position past the bracket that closes it,
        or the chunk's end. Python steps in only where brackets do not balance within the
        chunk (or nest deeper than _BALANCED follows) and where a string crosses its end."""
        size = len(chunk)
        depth = self._depth
        floor = self._floor
        while pos < size:
            if self._in_string:
                pos = self._skip_string(chunk, pos)
                continue
            pos = _run_end(_BALANCED, chunk, pos)
            if pos == size:
                break
            byte = chunk[pos]
            pos += 1
            if byte == _QUOTE:
                self._in_string = True  # a string that runs past this chunk
            elif byte in _OPENERS:
                depth += 1
                if depth > _MAX_DEPTH:
                    self._fail()
                    break
            else:
                depth -= 1
                if depth == floor:
                    break
        self._depth = depth
        return pos

    def _keep(self, chunk: bytes, start: int, end: int) -> None:
        size = self._kept_size + end - start
        if size <= _KEEP_LIMITS[self._role]:
            self._kept.append(chunk[start:end])
        self._kept_size = size

    def _value_done(self) -> None:
        role = self._role
        value = None if role == _SKIP else self._decoded()
        self._role = _SKIP
        self._kept = []
        self._expect = _NEXT
        if role == _KEEP_NAME:
            self._name = value if type(value) is str else None
            self._expect = _NAME_SEPARATOR
        elif role == _KEEP_REASON:
            self._choice_reason = value if type(value) is str else None
        elif role == _KEEP_USAGE:
            self._usage = self._read_usage(value)
        elif role == _KEEP_TOP_REASON:
            self._reason = value if type(value) is str else None
        elif role == _KEEP_MEMBER and self._name is not None:
            self._members[self._name] = value

    def _decoded(self) -> object:
        """The kept value, decoded; None when it outgrew its bound or is not JSON."""
        if self._kept_size > _KEEP_LIMITS[self._role]:
            return None
        try:
            return orjson.loads(b"".join(self._kept))
        except orjson.JSONDecodeError:
            return None

    def _fail(self) -> int:
        """Not the JSON object a response is: there are no facts, and feed stops reading."""
        self._failed = True
        return 0


class ResponseReader:
    """A response's facts, from its chunks as they pass: a small body is kept and decoded
    whole; past _DECODE_LIMIT it is scanned instead, and nothing more is kept."""

    __slots__ = ("_decode", "_make_scanner", "_parts", "_scanner", "_size")

    def __init__(
        self,
        decode: Callable[[bytes], ResponseFacts],
        make_scanner: Callable[[], BodyReader] = ResponseScanner,
    ) -> None:
        """``decode`` reads a whole small body (the API's own decoder); ``make_scanner``
        gives the scanner for a large one, set for the API's shape."""
        self._decode = decode
        self._make_scanner = make_scanner
        self._parts: list[bytes] = []
        self._size = 0
        self._scanner: BodyReader | None = None

    def feed(self, chunk: bytes) -> None:
        scanner = self._scanner
        if scanner is None:
            self._size += len(chunk)
            if self._size <= _DECODE_LIMIT:
                self._parts.append(chunk)
                return
            scanner = self._scanner = self._make_scanner()
            for part in self._parts:
                scanner.feed(part)
            self._parts = []
        scanner.feed(chunk)

    def facts(self) -> ResponseFacts:
        """The facts of the body fed so far, read as a whole body."""
        if self._scanner is not None:
            return self._scanner.facts()
        parts = self._parts
        return self._decode(parts[0] if len(parts) == 1 else b"".join(parts))
