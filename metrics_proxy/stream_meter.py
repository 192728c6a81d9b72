"""Metering an event stream as it passes: sans-I/O, fed the very bytes the proxy forwards."""

from __future__ import annotations

from metrics_proxy.payloads import Injection, strip_usage_field
from metrics_proxy.record import RequestTracker
from metrics_proxy.sse import Event, SSEDecoder, Usage, chunk_facts

# The most bytes of one unfinished event (or line) held back: past it the upstream is not
# sending SSE a client could use, and holding more would let it fill the proxy's memory.
MAX_UNFINISHED_EVENT = 16 * 1024 * 1024


class StreamMeter:
    """Feeds an upstream event stream to the SSE decoder, tells the tracker about every chunk
    that carries output, keeps the last finish_reason and usage, and removes what the proxy
    itself asked the upstream for (the usage chunk, or per-chunk usage) so the client gets
    the bytes it would have got without the proxy.

    Bytes are forwarded as they arrive up to the decoder's boundary (whole events and
    comments); the tail of an unfinished event waits for its end. An SSE client cannot use
    half an event, and this way an upstream that dies mid-event never leaves the client with
    one glued to the error event that ends its stream. An unfinished event that outgrows
    MAX_UNFINISHED_EVENT sets ``event_too_large``: its bytes are dropped, and nothing more
    is metered or forwarded.
    """

    __slots__ = (
        "_decoder",
        "_emitted",
        "_held",
        "_held_size",
        "_strip_chunk_usage",
        "_strip_final_usage",
        "_tracker",
        "done",
        "event_too_large",
        "finish_reason",
        "upstream_error",
        "usage",
    )

    def __init__(self, tracker: RequestTracker, injection: Injection) -> None:
        self._tracker = tracker
        self._decoder = SSEDecoder()
        self._strip_final_usage = injection.strip_final_usage
        self._strip_chunk_usage = injection.strip_chunk_usage
        # Pieces of an unfinished event, not forwarded yet: joined only once there is
        # something to forward, so a long event is not copied again on every chunk.
        self._held: list[bytes] = []
        self._held_size = 0
        self._emitted = 0  # stream offset up to which bytes were forwarded (or dropped)
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.upstream_error = False
        self.event_too_large = False

    def feed(self, chunk: bytes, now: float) -> bytes:
        """Meter one network chunk; returns the bytes to forward now (often ``chunk`` itself)."""
        if self.event_too_large:
            return b""
        decoder = self._decoder
        events = decoder.feed(chunk)
        changes = self._meter(events, now) if events else None
        boundary = decoder.boundary
        if changes is None and not self._held and boundary == decoder.fed:
            self._emitted = boundary  # the common case: whole events, nothing to change
            return chunk
        if changes is None and boundary == self._emitted:
            self._hold(chunk)  # still inside the same unfinished event
            return b""
        return self._settle(self._take_held(chunk), events, changes, boundary)

    def close(self, now: float) -> bytes:
        """The end of the stream: meter an unterminated last event, release held bytes."""
        if self.event_too_large:
            return b""
        events = self._decoder.flush()
        changes = self._meter(events, now) if events else None
        return self._settle(self._take_held(b""), events, changes, self._decoder.boundary)

    def _hold(self, piece: bytes) -> None:
        if not piece:
            return
        self._held.append(piece)
        self._held_size += len(piece)
        if self._held_size > MAX_UNFINISHED_EVENT:
            self.event_too_large = True
            self._held = []
            self._held_size = 0
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

    def _meter(self, events: list[Event], now: float) -> dict[int, bool] | None:
        """Count each event. Return the events whose bytes change, by position: True to drop
        the event (the usage chunk), False to cut ``usage`` out of it."""
        tracker = self._tracker
        changes: dict[int, bool] | None = None
        for position, event in enumerate(events):
            facts = chunk_facts(event.data)
            if facts is None:
                continue
            if facts.done:
                self.done = True
                continue
            for index in facts.outputs:
                tracker.output(index, now)
            if facts.finish_reason is not None:
                self.finish_reason = facts.finish_reason
            if facts.error:
                self.upstream_error = True
            if facts.usage is not None:
                self.usage = facts.usage
            # The usage-only chunk is dropped or kept whole; others lose `usage`.
            if facts.usage_key and (
                self._strip_final_usage if facts.usage_only else self._strip_chunk_usage
            ):
                if changes is None:
                    changes = {}
                changes[position] = facts.usage_only
        return changes

    def _settle(
        self,
        held: bytes,
        events: list[Event],
        changes: dict[int, bool] | None,
        boundary: int,
    ) -> bytes:
        """Bytes up to ``boundary``, with the changes applied; keep the rest."""
        base = self._emitted
        self._emitted = boundary
        self._hold(held[boundary - base :])
        if changes is None:
            return held[: boundary - base]
        out: list[bytes] = []
        copied = 0  # held[:copied] is dealt with
        span_start = 0  # an event's span runs from the previous event's end to its own
        for position, event in enumerate(events):
            end = event.end - base
            change = changes.get(position)
            if change is not None:
                out.append(held[copied:span_start])
                if not change:
                    segment = held[span_start:end]
                    out.append(segment.replace(event.data, strip_usage_field(event.data), 1))
                copied = end
            span_start = end
        out.append(held[copied : boundary - base])
        return b"".join(out)
