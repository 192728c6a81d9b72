"""Metering an event stream as it passes: sans-I/O, fed the very bytes the proxy forwards."""

from __future__ import annotations

from metrics_proxy.payloads import Injection, strip_usage_field
from metrics_proxy.sse import Event, SSEDecoder, Usage, chunk_facts
from metrics_proxy.tracker import RequestTracker


class StreamMeter:
    """Feeds an upstream event stream to the SSE decoder, tells the tracker about every chunk
    that carries output, keeps the last finish_reason and usage, and removes what the proxy
    itself asked the upstream for (the usage chunk, or per-chunk usage) so the client gets
    the bytes it would have got without the proxy.

    Without anything to remove, every chunk is forwarded as it came, at once. With
    something to remove, bytes are forwarded up to the last complete event and the tail of
    an unfinished event waits for its end (an SSE client cannot use half an event anyway).
    """

    __slots__ = (
        "_decoder",
        "_emitted",
        "_held",
        "_strip",
        "_strip_chunk_usage",
        "_strip_final_usage",
        "_tracker",
        "done",
        "finish_reason",
        "upstream_error",
        "usage",
    )

    def __init__(self, tracker: RequestTracker, injection: Injection) -> None:
        self._tracker = tracker
        self._decoder = SSEDecoder()
        self._strip_final_usage = injection.strip_final_usage
        self._strip_chunk_usage = injection.strip_chunk_usage
        self._strip = injection.strip_final_usage or injection.strip_chunk_usage
        self._held = b""  # strip mode: bytes of an unfinished event, not forwarded yet
        self._emitted = 0  # strip mode: stream offset up to which bytes were settled
        self.done = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.upstream_error = False

    def feed(self, chunk: bytes, now: float) -> bytes:
        """Meter one network chunk; returns the bytes to forward now (often ``chunk`` itself)."""
        events = self._decoder.feed(chunk)
        if not self._strip:
            if events:
                self._meter(events, now)
            return chunk
        held = self._held + chunk if self._held else chunk
        if not events:
            self._held = held
            return b""
        return self._settle(held, events, self._meter(events, now))

    def close(self, now: float) -> bytes:
        """The end of the stream: meter an unterminated last event, release held bytes."""
        events = self._decoder.flush()
        held, self._held = self._held, b""
        if not events:
            return held
        removals = self._meter(events, now)
        return self._settle(held, events, removals) if self._strip else b""

    def _meter(self, events: list[Event], now: float) -> dict[int, bool] | None:
        """Count each event. In strip mode, return the events whose bytes change, by position:
        True to drop the event (the usage chunk), False to cut ``usage`` out of it."""
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
                # The usage-only chunk is dropped or kept whole; other chunks lose `usage`.
                if self._strip_final_usage if facts.usage_only else self._strip_chunk_usage:
                    if changes is None:
                        changes = {}
                    changes[position] = facts.usage_only
        return changes

    def _settle(self, held: bytes, events: list[Event], changes: dict[int, bool] | None) -> bytes:
        """Bytes up to the last complete event, with the changes applied; keep the rest."""
        base = self._emitted
        last_end = events[-1].end
        self._emitted = last_end
        self._held = held[last_end - base :]
        if changes is None:
            return held[: last_end - base]
        kept: list[bytes] = []
        start = 0
        for position, event in enumerate(events):
            end = event.end - base
            segment = held[start:end]
            start = end
            change = changes.get(position)
            if change is None:
                kept.append(segment)
            elif not change:
                kept.append(segment.replace(event.data, strip_usage_field(event.data), 1))
        return b"".join(kept)
