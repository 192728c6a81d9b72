"""Sans-I/O Server-Sent-Events decoder: bytes in, events out; it knows nothing of what the
events say (each API module reads its own)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "SSEDecoder"]

_LF = 0x0A
_COLON = 0x3A
_SPACE = 0x20
_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class Event:
    """One dispatched event: its data field and the stream offset just past its blank line.

    Not frozen, though never changed: a frozen dataclass's constructor costs three times as
    much, and one is built for every streamed token."""

    data: bytes
    end: int


class SSEDecoder:
    """Incremental WHATWG event-stream parser: feed it the bytes as they arrive, get events.

    `end` offsets count every byte fed since creation, so `stream[prev.end:event.end]` is the
    exact slice of the forwarded stream that carried `event`. `boundary` is the offset up to
    which the stream holds only whole events and whole comments: what a proxy can forward
    without ever leaving a client with half an event.
    """

    __slots__ = ("_data", "_fed", "_held", "_in_event", "_partial", "_skip_lf", "boundary")

    def __init__(self) -> None:
        self._fed = 0
        self.boundary = 0
        # Pieces of a line whose ending has not arrived yet, joined once it does, so that a
        # long line arriving in many chunks is not copied again on every chunk.
        self._partial: list[bytes] = []
        self._data: list[bytes] = []
        self._in_event = False  # a field line of the current event was seen
        self._skip_lf = False  # the last byte fed was a CR, so a LF next belongs to it
        # An event whose blank line ended with a CR as the very last byte fed: its `end`
        # depends on whether the next byte is the LF of a CRLF, so it waits for that byte.
        self._held: bytes | None = None

    @property
    def fed(self) -> int:
        """How many bytes were fed since creation."""
        return self._fed

    @property
    def pending(self) -> bool:
        """True when part of an unfinished line or event is buffered (a truncated stream)."""
        return bool(self._partial) or self._in_event

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume `chunk` and return the events it completed, in stream order."""
        base = self._fed
        self._fed = base + len(chunk)
        if not chunk:
            return []
        events: list[Event] = []
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                start = 1
            if self._held is not None:
                events.append(Event(self._held, base + start))
                self._held = None
                self.boundary = base + start
        if not self._partial and not self._in_event and b"\r" not in chunk:
            start = _whole_data_events(chunk, start, base, events)
            self.boundary = max(self.boundary, base + start)
            if start == len(chunk):
                return events
        self._parse(chunk, start, base, events)
        return events

    def flush(self) -> list[Event]:
        """End of stream: return what is left that has data (even unterminated) and reset.

        Call it even when not `pending`: an event whose blank line ended with a lone CR is
        complete but waits for the next byte, or for this, to learn its `end`.
        """
        events: list[Event] = []
        if self._held is not None:
            events.append(Event(self._held, self._fed))
        if self._partial:
            line = b"".join(self._partial)
            self._field(line, 0, len(line))
        if self._data:
            events.append(Event(b"\n".join(self._data), self._fed))
        self._partial = []
        self._data = []
        self._in_event = self._skip_lf = False
        self._held = None
        self.boundary = self._fed
        return events

    def _parse(self, chunk: bytes, start: int, base: int, events: list[Event]) -> None:
        """The general path: any line endings, comments, fields, lines split across chunks."""
        if self._partial:
            self._partial.append(chunk[start:] if start else chunk)
            if chunk.find(b"\n", start) < 0 and chunk.find(b"\r", start) < 0:
                return
            text = b"".join(self._partial)
            self._partial.clear()
            origin, i = self._fed - len(text), 0  # origin: the stream offset of text[0]
        else:
            text, origin, i = chunk, base, start
        if origin + i == 0 and text.startswith(_BOM):
            i = 3
        size = len(text)
        # Both terminators are searched once each and only re-searched once passed, so a
        # buffer of many LF lines is not rescanned for a CR that is not there.
        cr = text.find(b"\r", i)
        lf = text.find(b"\n", i)
        data = self._data
        while cr >= 0 or lf >= 0:
            if lf < 0 or 0 <= cr < lf:
                eol, nxt = cr, cr + 1
                if nxt == size:
                    self._skip_lf = True
                elif text[nxt] == _LF:
                    nxt += 1
            else:
                eol, nxt = lf, lf + 1
            if eol > i:
                self._field(text, i, eol)
                if not self._in_event and not self._skip_lf:
                    self.boundary = origin + nxt  # a whole comment outside any event
            else:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    if self._skip_lf:
                        self._held = payload
                    else:
                        events.append(Event(payload, origin + nxt))
                if not self._skip_lf:
                    self.boundary = origin + nxt
                self._in_event = False
            i = nxt
            if 0 <= cr < i:
                cr = text.find(b"\r", i)
            if 0 <= lf < i:
                lf = text.find(b"\n", i)
        if i < size:
            self._partial.append(text[i:])

    def _field(self, text: bytes, i: int, eol: int) -> None:
        """Apply the non-blank line text[i:eol]; only `data` matters, other fields are ignored."""
        if text[i] == _COLON:
            return  # a comment, e.g. a keep-alive ping
        self._in_event = True
        if text.startswith(b"data", i) and (eol == i + 4 or text[i + 4] == _COLON):
            value = i + 5
            if value < eol and text[value] == _SPACE:
                value += 1
            self._data.append(text[value:eol])


def _whole_data_events(chunk: bytes, pos: int, base: int, events: list[Event]) -> int:
    """The fast path: append the leading `data: ...\\n\\n` events of chunk; return where it stopped.

    Only valid when the decoder holds nothing and chunk has no CR, which is how vLLM writes
    every token: one find per event and one copy, of the payload itself.
    """
    find = chunk.find
    startswith = chunk.startswith
    size = len(chunk)
    while pos < size and startswith(b"data:", pos):
        value = pos + 5
        lf = find(b"\n", value)
        if lf < 0 or not startswith(b"\n", lf + 1):
            break  # a multi-line event or an unfinished one: the general path takes over
        if chunk[value] == _SPACE:
            value += 1
        pos = lf + 2
        events.append(Event(chunk[value:lf], base + pos))
    return pos
