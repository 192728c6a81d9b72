"""Metering an event stream as it passes: sans-I/O, fed the very bytes the proxy forwards,
returning what to forward and what it saw. It asks the route's API module what each event
says; it knows nothing of any API's JSON itself."""

from __future__ import annotations

from metrics_proxy.apis.base import Api, EngineTimes, EventFacts, Injection, Usage
from metrics_proxy.sse import Event, SSEDecoder

# The most bytes of one unfinished event (or line) held back: past it the upstream is not
# sending SSE a client could use, and holding more would let it fill the proxy's memory.
MAX_UNFINISHED_EVENT = 16 * 1024 * 1024
# The most whole events held back at once for the next one to decide (a finish chunk per
# output): past it they go as they came, and memory stays bounded whatever an upstream sends.
MAX_KEPT_BACK = 256


_NO_OUTPUTS: tuple[int, ...] = ()


class _Held:
    """An event the reader holds back until the next one: its data as it stands."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class StreamMeter:
    """Feeds an upstream event stream to the SSE decoder, returns with each chunk the
    outputs (by index) its events carried, keeps the last finish word and usage, and takes
    out what the proxy itself asked the upstream for (the API's ``undo``) so the client gets
    the bytes it would have got without the proxy.

    Bytes are forwarded as they arrive up to the decoder's boundary (whole events and
    comments); the tail of an unfinished event waits for its end. An SSE client cannot use
    half an event, and this way an upstream that dies mid-event never leaves the client with
    one glued to the error event that ends its stream. An unfinished event that outgrows
    MAX_UNFINISHED_EVENT sets ``event_too_large``: its bytes are dropped, and nothing more
    is metered or forwarded.
    """

    __slots__ = (
        "_closing",
        "_decoder",
        "_emitted",
        "_held",
        "_held_size",
        "_kept_back",
        "_reader",
        "_releases",
        "_waiting",
        "done",
        "engine",
        "event_too_large",
        "finish_reason",
        "pending_id",
        "released_at_close",
        "upstream_error",
        "usage",
    )

    def __init__(self, api: Api, injection: Injection) -> None:
        self._reader = api.event_reader(injection)
        self._decoder = SSEDecoder()
        # Pieces of an unfinished event, not forwarded yet: joined only once there is
        # something to forward, so a long event is not copied again on every chunk.
        self._held: list[bytes] = []
        self._held_size = 0
        # Whole events held back until the next one says what they become (the reader's
        # holds/release), as (their bytes on the wire, their data); and, for the events of
        # one feed, those before which they go out, by position.
        self._kept_back: list[tuple[bytes, bytes]] = []
        self._waiting: list[bytes] = []  # the data of those held back, as read
        self._releases: dict[int, list[bytes]] = {}
        # What close() let go of those: whole events, to send even when the stream broke.
        self.released_at_close = b""
        self._closing = False
        self._emitted = 0  # stream offset up to which bytes were forwarded (or dropped)
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.engine: EngineTimes | None = None  # the engine's own times, if it said
        self.pending_id: str | None = None  # a response that runs on without this stream
        self.upstream_error = False
        self.event_too_large = False

    def feed(self, chunk: bytes) -> tuple[bytes, tuple[int, ...]]:
        """Meter one network chunk: the bytes to forward now (often ``chunk`` itself), and
        the index of the output each of its output-carrying events was for, in order."""
        if self.event_too_large:
            return b"", _NO_OUTPUTS
        decoder = self._decoder
        events = decoder.feed(chunk)
        outputs, changes = self._meter(events) if events else (_NO_OUTPUTS, None)
        boundary = decoder.boundary
        if changes is None and not self._held and boundary == decoder.fed:
            self._emitted = boundary  # the common case: whole events, nothing to change
            return chunk, outputs
        if changes is None and boundary == self._emitted:
            self._hold(chunk)  # still inside the same unfinished event
            return b"", outputs
        return self._settle(self._take_held(chunk), events, changes, boundary), outputs

    def close(self) -> tuple[bytes, tuple[int, ...]]:
        """The end of the stream: meter an unterminated last event, release held bytes."""
        if self.event_too_large:
            return b"", _NO_OUTPUTS
        self._closing = True
        events = self._decoder.flush()
        outputs, changes = self._meter(events) if events else (_NO_OUTPUTS, None)
        held = self._take_held(b"")
        out = self._settle(held, events, changes, self._decoder.boundary)
        if self._waiting:  # the end came after them
            waiting, self._waiting = self._waiting, []
            released = self._let_go(self._reader.release(waiting, None, None) or waiting)
            self.released_at_close += released
            out += released
        return out, outputs

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._held.append(piece)
        self._held_size += len(piece)
        if self._held_size > MAX_UNFINISHED_EVENT:
            self.event_too_large = True
            self._held = []
            self._held_size = 0
            # Whole events held back still go, as they came, before the error event.
            self.released_at_close = b"".join(segment for segment, _ in self._kept_back)
            self._kept_back = []
            self._waiting = []
            self._decoder = SSEDecoder()  # drop what it holds of the event too

    def _take_held(self, chunk: bytes) -> bytes:
        """The held bytes followed by chunk, as one."""
        held = self._held
        if not held:
            return chunk
        if chunk:
            held.append(chunk)
        self._held = []
        self._held_size = 0
        return held[0] if len(held) == 1 else b"".join(held)

    def _meter(
        self, events: list[Event]
    ) -> tuple[tuple[int, ...], dict[int, bytes | _Held] | None]:
        """Read each event: the outputs they carried, and the events whose bytes change, by
        position, with their new data (b"" drops the event)."""
        reader = self._reader
        read = reader.facts
        outputs = _NO_OUTPUTS
        changes: dict[int, bytes | _Held] | None = None
        for position, event in enumerate(events):
            facts = read(event.data)
            if self._waiting and self._released_by(position, facts, event.data):
                changes = {} if changes is None else changes
            if facts is None:
                continue
            if facts.done:
                self.done = True
                continue
            if facts.outputs:
                outputs = outputs + facts.outputs if outputs else facts.outputs
            if facts.finish_reason is not None:
                self.finish_reason = facts.finish_reason
            if facts.error:
                self.upstream_error = True
            if facts.usage is not None:
                self.usage = facts.usage
                if facts.engine is not None:
                    self.engine = facts.engine
            if facts.pending_id is not None:
                self.pending_id = facts.pending_id
            change: bytes | _Held | None = None
            if facts.usage_key:  # only an event with usage can be one the proxy changed
                change = reader.undo(event.data, facts)
            if facts.finish_reason is not None and reader.holds(facts):
                if len(self._waiting) >= MAX_KEPT_BACK:
                    # Too many held: those go now, as they came, before this one (in order).
                    self._releases[position] = self._waiting
                    self._waiting = []
                    changes = {} if changes is None else changes
                data = event.data if change is None else change
                assert isinstance(data, bytes)
                self._waiting.append(data)
                change = _Held(data)
            if change is not None:
                if changes is None:
                    changes = {}
                changes[position] = change
        return outputs, changes

    def _released_by(self, position: int, facts: EventFacts | None, data: bytes) -> bool:
        """Ask the reader whether this event lets the events held back go (before it)."""
        released = self._reader.release(self._waiting, facts, data)
        if released is None:
            return False
        # Those held earlier in this same feed are on the wire once the feed is settled.
        self._releases[position] = released
        self._waiting = []
        return True

    def _let_go(self, released: list[bytes]) -> bytes:
        """The events held back, on the wire, with their data as released."""
        out = [
            segment.replace(data, new, 1) if new != data else segment
            for (segment, data), new in zip(self._kept_back, released, strict=True)
            if new
        ]
        self._kept_back = []
        return b"".join(out)

    def _settle(
        self,
        held: bytes,
        events: list[Event],
        changes: dict[int, bytes | _Held] | None,
        boundary: int,
    ) -> bytes:
        """Bytes up to ``boundary``, with the changes applied; keep the rest."""
        base = self._emitted
        self._emitted = boundary
        if changes is None:
            self._hold(held[boundary - base :])
            return held[: boundary - base]
        out: list[bytes] = []
        copied = 0  # held[:copied] is dealt with
        span_start = 0  # an event's span runs from the previous event's end to its own
        releases, self._releases = self._releases, {}
        for position, event in enumerate(events):
            end = event.end - base
            released = releases.get(position)
            if released is not None:
                out.append(held[copied:span_start])
                let_go = self._let_go(released)
                if self._closing:  # to send even when the stream broke: whole events
                    self.released_at_close += let_go
                out.append(let_go)
                copied = span_start
            change = changes.get(position)
            if change is not None:
                out.append(held[copied:span_start])
                segment = held[span_start:end]
                if isinstance(change, _Held):
                    self._kept_back.append(
                        (segment.replace(event.data, change.data, 1), change.data)
                    )
                elif change:
                    out.append(segment.replace(event.data, change, 1))
                copied = end
            span_start = end
        out.append(held[copied : boundary - base])
        # The unfinished tail is held last: should it outgrow its bound, what this feed let
        # go of (and what is still held back) is already settled.
        self._hold(held[boundary - base :])
        return b"".join(out)
