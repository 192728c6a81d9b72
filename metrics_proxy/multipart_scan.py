"""A multipart/form-data body followed as it passes: sans-I/O, never keeping it.

The audio APIs take a form: the audio file (large) and a few small fields. The scanner lets
every byte through, keeps the values of the few fields it was asked for (each within a
bound), and finds where the form ends, so that fields can be added in front of its closing
delimiter. It reads the form as python-multipart (vLLM's parser, through Starlette) does, and
only the strict part of what that accepts: the body starts with the first delimiter, and a
delimiter inside a part is ``CRLF--boundary`` followed by CRLF (another part) or ``--`` (the
end); anything else is that part's data. A form it cannot read the way vLLM will (a
preamble, a malformed header, a name it cannot be sure of) makes it give up (``readable``
False): the rest passes untouched and nothing is added.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["FormFields", "FormScanner", "form_boundary", "form_part"]

# A field's value, or None when the field is there but no value of it can be read: a file
# part, or a value longer than _MAX_VALUE.
FormFields = dict[str, bytes | None]

_MAX_HEADERS = 16 * 1024  # one part's header block (python-multipart takes 8 lines of 4 KiB)
_MAX_VALUE = 256  # a kept value: the fields read are booleans and small numbers

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SPACE = r"[ \t]*"  # not \s: in a str pattern that takes Unicode spaces too
# A quoted parameter value without escapes (parsers differ on those) or control bytes.
_QUOTED = r'"[^"\\\x00-\x1f\x7f]*"'
# RFC 2046 boundary characters, which include neither CR nor a quote.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
_CONTENT_TYPE = re.compile(rf"{_SPACE}multipart/form-data{_SPACE}((?:;[^;]*)*)", re.I)
_PARAM = re.compile(rf"{_SPACE};{_SPACE}({_TOKEN}){_SPACE}={_SPACE}({_QUOTED}|{_TOKEN})")
_DISPOSITION = re.compile(rf"{_SPACE}form-data((?:{_PARAM.pattern})*){_SPACE};?{_SPACE}", re.I)
_HEADER_NAME = re.compile(_TOKEN.encode())

_START, _HEADERS, _DATA, _PASS = range(4)


def form_boundary(content_type: str | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None for any other type or
    a boundary the scanner would not be sure to read as vLLM's parser does."""
    match = _CONTENT_TYPE.fullmatch(content_type or "")
    if match is None:
        return None
    boundaries = [
        value.strip().removeprefix('"').removesuffix('"')
        for name, _, value in (param.partition("=") for param in match[1].split(";")[1:])
        if name.strip().lower() == "boundary"
    ]
    if len(boundaries) != 1 or not _BOUNDARY.fullmatch(boundaries[0]):
        return None
    return boundaries[0].encode("ascii")


def form_part(boundary: bytes, name: str, value: str) -> bytes:
    """A field to add in front of a form's closing delimiter (which starts with the CRLF that
    ends the part before it, so this part starts with one too and ends without)."""
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode("ascii")
    return b"\r\n--" + boundary + b"\r\n" + disposition + b"\r\n\r\n" + value.encode("ascii")


def _part_name(block: bytes) -> tuple[str, bool] | None:
    """A part's field name and whether it is a file (it has a filename), from its header
    block; None when it cannot be told for sure."""
    disposition = None
    for line in block.split(b"\r\n") if block else ():
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name) or b"\r" in value or b"\n" in value:
            return None
        if name.lower() == b"content-disposition":
            if disposition is not None:
                return None  # which one a parser takes is its own choice
            disposition = value.lstrip(b" ").decode("latin-1")
    match = _DISPOSITION.fullmatch(disposition or "")
    if match is None:
        return None
    params: dict[str, str] = {}
    for key, quoted in _PARAM.findall(match[1]):
        key = key.lower()
        # `name*=` (RFC 2231) is read by some versions of the parser and ignored by others.
        if key in params or "*" in key:
            return None
        params[key] = quoted.removeprefix('"').removesuffix('"') if quoted[:1] == '"' else quoted
    if "name" not in params:
        return None
    return params["name"], "filename" in params


class FormScanner:
    """Feed it a form's body chunk by chunk; forward what ``feed`` and ``close`` return.

    ``fields`` holds the last value of each wanted field seen so far (a repeated field's last
    value is the one Starlette keeps). When the closing delimiter is found, ``before_end`` is
    called once with the fields and the bytes it returns go in front of the delimiter. Only
    bytes that may be the start of the closing delimiter are held back (fewer than the
    delimiter's length, plus its two last bytes); a header block is kept for reading, within
    a bound, but never held back.
    """

    __slots__ = (
        "_before_end",
        "_delimiter",
        "_first",
        "_keeping",
        "_kept",
        "_kept_size",
        "_rest",
        "_rest_unsent",
        "_state",
        "_waiting",
        "_wanted",
        "ended",
        "fields",
        "readable",
    )

    def __init__(
        self,
        boundary: bytes,
        wanted: frozenset[str],
        before_end: Callable[[FormFields], bytes],
    ) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._first = b"--" + boundary + b"\r\n"
        self._wanted = wanted
        self._before_end = before_end
        self._state = _START
        self._rest = b""  # bytes not read yet, at the start of the next chunk
        self._rest_unsent = False  # ... and not forwarded yet either
        self._waiting = False  # the current step needs more bytes
        self._keeping: str | None = None  # the wanted field whose value is being read
        self._kept: list[bytes] = []
        self._kept_size = 0
        self.fields: FormFields = {}
        self.readable = True
        self.ended = False  # the closing delimiter has been seen

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward now."""
        if self._state == _PASS:
            return chunk
        rest = self._rest
        data = rest + chunk if rest else chunk
        unsent = 0 if self._rest_unsent else len(rest)
        pos = self._scan(data)
        if self._state == _PASS:
            self._rest = b""
            return self._end(data, unsent, pos) if self.ended else data[unsent:]
        self._rest = data[pos:]
        # Inside a part's data the tail read last may begin the closing delimiter: held back.
        self._rest_unsent = self._state == _DATA and pos < len(data)
        sent_to = pos if self._rest_unsent else len(data)
        return data if unsent == 0 and sent_to == len(data) else data[unsent:sent_to]

    def close(self) -> bytes:
        """The body ended (without its closing delimiter, if held bytes remain): the bytes
        still to forward."""
        held = self._rest if self._rest_unsent else b""
        self._rest = b""
        self._rest_unsent = False
        self._state = _PASS
        return held

    def _end(self, data: bytes, unsent: int, delimiter_at: int) -> bytes:
        added = self._before_end(self.fields)
        return data[unsent:delimiter_at] + added + data[delimiter_at:]

    def _scan(self, data: bytes) -> int:
        """Read as far as ``data`` allows; where reading stopped."""
        pos = 0
        self._waiting = False
        while not self._waiting and self._state != _PASS and pos < len(data):
            if self._state == _START:
                pos = self._start(data)
            elif self._state == _HEADERS:
                pos = self._headers(data, pos)
            else:
                pos = self._data(data, pos)
        return pos

    def _start(self, data: bytes) -> int:
        first = self._first
        if len(data) < len(first) and first.startswith(data):
            self._waiting = True
            return 0
        if not data.startswith(first):
            return self._unreadable()
        self._state = _HEADERS
        return len(first)

    def _headers(self, data: bytes, pos: int) -> int:
        if data.startswith(b"\r\n", pos):
            block, end = b"", pos + 2  # a part without headers
        else:
            found = data.find(b"\r\n\r\n", pos)
            if found < 0:
                # Past this, a block within the bound would have ended in what is here.
                if len(data) - pos >= _MAX_HEADERS + 4:
                    return self._unreadable()
                self._waiting = True
                return pos
            if found - pos > _MAX_HEADERS:
                return self._unreadable()
            block, end = data[pos:found], found + 4
        named = _part_name(block)
        if named is None:
            return self._unreadable()
        name, is_file = named
        self._keeping = None
        if name in self._wanted:
            self.fields[name] = None  # unless its value is read whole
            if not is_file:
                self._keeping = name
                self._kept = []
                self._kept_size = 0
        self._state = _DATA
        return end

    def _data(self, data: bytes, pos: int) -> int:
        """Inside a part: on to its end, or to the tail that may begin a delimiter."""
        delimiter = self._delimiter
        search = pos
        while (found := data.find(delimiter, search)) >= 0:
            after = found + len(delimiter)
            if len(data) < after + 2:
                self._keep(data, pos, found)
                self._waiting = True
                return found
            tail = data[after : after + 2]
            if tail in (b"\r\n", b"--"):
                self._keep(data, pos, found)
                self._part_done()
                if tail == b"--":
                    self.ended = True
                    self._state = _PASS
                    return found
                self._state = _HEADERS
                return after + 2
            search = found + 1  # not a delimiter after all: the part's data
        # The delimiter holds one CR, its first byte: only the last CR can start it.
        hold = data.rfind(b"\r", max(pos, len(data) - len(delimiter) + 1))
        if hold < 0 or not delimiter.startswith(data[hold:]):
            hold = len(data)
        self._keep(data, pos, hold)
        self._waiting = hold < len(data)
        return hold

    def _keep(self, data: bytes, start: int, end: int) -> None:
        if self._keeping is None or end <= start:
            return
        self._kept_size += end - start
        if self._kept_size <= _MAX_VALUE:
            self._kept.append(data[start:end])

    def _part_done(self) -> None:
        name = self._keeping
        if name is not None and self._kept_size <= _MAX_VALUE:
            self.fields[name] = b"".join(self._kept)
        self._keeping = None
        self._kept = []

    def _unreadable(self) -> int:
        self.readable = False
        self._state = _PASS
        return 0
