"""One request's clock and gauges, from arrival to its single, final account."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Protocol


class Meters(Protocol):
    """What a tracker moves: the recorder's gauges, interval histograms and final count."""

    clock: Callable[[], float]

    def increment_waiting(self) -> None: ...
    def decrement_waiting(self) -> None: ...
    def increment_running(self) -> None: ...
    def decrement_running(self) -> None: ...
    def observe_queue_time(self, seconds: float) -> None: ...
    def observe_time_to_first_token(self, seconds: float) -> None: ...
    def observe_inter_token_latency(self, seconds: float) -> None: ...
    def finalize_request(self, result: FinishedRequest) -> None: ...


@dataclass(slots=True)  # not frozen: its __init__ would cost a microsecond per request more
class FinishedRequest:
    """What :meth:`ProxyMetricsRecorder.finalize_request` counts for one request."""

    finished_reason: str | None
    _: KW_ONLY
    completed: bool
    prompt_tokens: int | None
    generation_tokens: int
    max_generation_tokens: int
    estimated: bool = False
    n: int = 1
    max_tokens: int | None = None
    e2e_seconds: float = 0.0
    inference_seconds: float | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None


_WAITING, _RUNNING, _DONE = 0, 1, 2


class RequestTracker:
    """One request's clock and gauges. Each gauge is settled exactly once: ``finish`` is
    idempotent and settles whichever of waiting/running the request still holds.

    Timings (monotonic seconds) map vLLM's intervals onto what a proxy sees: queue =
    arrival → slot; TTFT = arrival → first output chunk; prefill = slot → first output;
    decode = first → last output; inference = slot → last output (or response end when
    nothing was streamed); e2e = arrival → response complete.
    """

    __slots__ = (
        "_chunks_by_choice",
        "_recorder",
        "_state",
        "arrival",
        "first_output_at",
        "last_output_at",
        "max_tokens",
        "n",
        "output_chunks",
        "slot_at",
    )

    def __init__(self, recorder: Meters, arrival: float) -> None:
        self._recorder = recorder
        self._state = _WAITING
        self._chunks_by_choice: dict[int, int] | None = None
        self.arrival = arrival
        self.slot_at: float | None = None
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self.output_chunks = 0
        self.n = 1
        self.max_tokens: int | None = None
        recorder.increment_waiting()

    @property
    def finished(self) -> bool:
        return self._state == _DONE

    def slot_acquired(self, now: float | None = None) -> None:
        if self._state != _WAITING:
            return
        now = self._recorder.clock() if now is None else now
        self._state = _RUNNING
        self.slot_at = now
        recorder = self._recorder
        recorder.decrement_waiting()
        recorder.increment_running()
        recorder.observe_queue_time(now - self.arrival)

    def output(self, index: int = 0, now: float | None = None) -> None:
        """A chunk that carries generated output for choice ``index`` arrived."""
        now = self._recorder.clock() if now is None else now
        last = self.last_output_at
        if last is None:
            self.first_output_at = now
            self._recorder.observe_time_to_first_token(now - self.arrival)
        else:
            self._recorder.observe_inter_token_latency(now - last)
        self.last_output_at = now
        self.output_chunks += 1
        if index or self._chunks_by_choice is not None:
            by_choice = self._chunks_by_choice
            if by_choice is None:
                by_choice = self._chunks_by_choice = {0: self.output_chunks - 1}
            by_choice[index] = by_choice.get(index, 0) + 1

    def discard(self) -> bool:
        """Settle the gauges of a request the upstream refused (a 4xx answer): vLLM's
        engine never ran it, so it counts in no vLLM request series. Idempotent."""
        state = self._state
        if state == _DONE:
            return False
        self._state = _DONE
        if state == _WAITING:
            self._recorder.decrement_waiting()
        else:
            self._recorder.decrement_running()
        return True

    def finish(
        self,
        reason: str | None,
        *,
        prompt_tokens: int | None = None,
        generation_tokens: int | None = None,
        completed: bool | None = None,
        now: float | None = None,
    ) -> bool:
        """Settle the request once; later calls return False and change nothing.

        ``reason`` is the upstream's finish_reason, or ``abort``/``error``. Without
        ``generation_tokens`` (no usage from the upstream) the count of output chunks is
        used and counted as an estimate. ``completed`` (default: reason is neither abort
        nor error) decides whether per-request histograms are observed, as vLLM only
        observes them for requests its engine finished.
        """
        state = self._state
        if state == _DONE:
            return False
        self._state = _DONE
        recorder = self._recorder
        now = recorder.clock() if now is None else now
        if state == _WAITING:
            recorder.decrement_waiting()
        else:
            recorder.decrement_running()
        if completed is None:
            completed = reason not in ("abort", "error")
        # Without usage the chunks were counted: an estimate once output was seen, or when the
        # upstream finished without reporting usage. A request that failed before any
        # output counts 0, as it showed none.
        estimated = (
            generation_tokens is None
            and state == _RUNNING
            and (self.output_chunks > 0 or completed)
        )
        if generation_tokens is None:
            generation_tokens = self.output_chunks
        by_choice = self._chunks_by_choice
        # Usage is a total over the n choices: the longest choice comes from its chunk count.
        max_generation = max(by_choice.values()) if by_choice else generation_tokens
        slot_at = self.slot_at
        first = self.first_output_at
        last = self.last_output_at
        inference = None if slot_at is None else (last if last is not None else now) - slot_at
        recorder.finalize_request(
            FinishedRequest(
                reason,
                completed=completed and slot_at is not None,
                prompt_tokens=prompt_tokens,
                generation_tokens=generation_tokens,
                max_generation_tokens=max_generation,
                estimated=estimated,
                n=self.n,
                max_tokens=self.max_tokens,
                e2e_seconds=now - self.arrival,
                inference_seconds=inference,
                prefill_seconds=None if first is None or slot_at is None else first - slot_at,
                decode_seconds=None if first is None or last is None else last - first,
            )
        )
        return True
