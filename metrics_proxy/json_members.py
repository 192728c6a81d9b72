"""Editing a JSON object's top-level members in its bytes, every other byte kept: pure.

Re-serialising a client's or an upstream's JSON would change it (integers beyond 64 bits
become floats, key order and spacing change, orjson's depth limit applies), so the proxy
edits the bytes instead.
"""

from __future__ import annotations

import re

__all__ = ["WHITESPACE", "drop_member", "skip_whitespace"]

WHITESPACE = b" \t\r\n"


# A JSON string (an unterminated one runs to the end, so scanning stays linear) or a
# structural byte; scalars need no token since they never contain any of these.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[\]{},]', re.S)
_SCALAR = re.compile(rb"[^\s,\]}]+")


def drop_member(data: bytes, key: bytes) -> bytes:
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
    colon = skip_whitespace(data, found + len(quoted))
    if before < 1 or data[before - 1] not in b",{" or not data.startswith(b":", colon):
        return None
    end = _value_end(data, skip_whitespace(data, colon + 1))
    if end < 0 or skip_whitespace(data, end) != close:
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
    opening = skip_whitespace(data, 0)
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
                    return data[:found] + data[skip_whitespace(data, pos + 1) :]
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


def skip_whitespace(data: bytes, pos: int) -> int:
    size = len(data)
    while pos < size and data[pos] in WHITESPACE:
        pos += 1
    return pos


def _skip_whitespace_back(data: bytes, pos: int) -> int:
    while pos > 0 and data[pos - 1] in WHITESPACE:
        pos -= 1
    return pos
