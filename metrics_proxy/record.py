"""One request's record: every fact of it, from arrival to its single, final account."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from metrics_proxy.apis.base import EngineTimes, Usage, vllm_finished_reason
from metrics_proxy.families import DisconnectStage, ErrorKind, FinishedReason


class Meters(Protocol):
    """What a record moves while it runs (gauges, interval histograms) and, once, at its end."""

    clock: Callable[[], float]
    model_name: str

    def increment_waiting(self) -> None: ...
    def decrement_waiting(self) -> None: ...
    def increment_running(self) -> None: ...
    def decrement_running(self) -> None: ...
    def observe_time_to_first_token(self, seconds: float, now: float | None = None) -> None: ...
    def observe_inter_token_latency(self, seconds: float, now: float | None = None) -> None: ...
    def finalize_request(self, record: RequestRecord) -> None: ...


class TenantSeries(Protocol):
    """A tenant's series (attribution): every settled request of the tenant, rejected or not."""

    label: str

    def settle(self, record: RequestRecord) -> None: ...


# _DETACHED: it ran, gave back its gauges, and waits for its account (see detach).
_WAITING, _RUNNING, _DONE, _DETACHED = 0, 1, 2, 3
# Outcomes of requests vLLM's engine did not finish: no per-request histograms for them.
_UNFINISHED = frozenset({FinishedReason.ABORT, FinishedReason.ERROR})


class RequestRecord:
    """One request: its clock, its gauges, what the upstream reported and how it ended.

    The proxy (or an embedding service) fills it in as the request goes, and :meth:`settle`
    accounts it exactly once: the gauges it holds, and, unless it was ``rejected``, every
    per-request series, all read from the record. The log line reads the same record.

    Timings (monotonic seconds) map vLLM's intervals onto what a proxy sees, observed when
    the request is accounted, as vLLM observes them at a request's finish: queue =
    arrival → slot; TTFT = arrival → first output; prefill = slot → first output; decode =
    first → last output; inference = slot → last output (or the end when nothing was
    streamed); e2e = arrival → the end.
    """

    __slots__ = (
        "_chunks_by_choice",
        "_meters",
        "_state",
        "arrival",
        "completed",
        "ended_at",
        "engine",
        "error_kind",
        "estimated",
        "finished_reason",
        "first_output_at",
        "generation_tokens",
        "last_output_at",
        "max_generation_tokens",
        "max_tokens",
        "n",
        "output_chunks",
        "prompt_tokens",
        "rejected",
        "slot_at",
        "stage",
        "status",
        "tenant",
        "tenant_series",
    )

    def __init__(self, meters: Meters, arrival: float) -> None:
        self._meters = meters
        self._state = _WAITING
        self._chunks_by_choice: dict[int, int] | None = None
        self.arrival = arrival
        self.slot_at: float | None = None
        self.first_output_at: float | None = None
        self.last_output_at: float | None = None
        self.ended_at: float | None = None
        self.output_chunks = 0
        self.n = 1
        self.max_tokens: int | None = None
        # What the upstream reported; None until it does (then the chunks are counted).
        self.engine: EngineTimes | None = None  # the engine's own times, when it reports them
        self.prompt_tokens: int | None = None
        self.generation_tokens: int | None = None
        # How it ended: vLLM's finished_reason, or a refusal that vLLM's engine never ran.
        self.finished_reason: str = FinishedReason.ERROR
        self.completed: bool | None = None  # None: unless it aborted or failed
        self.rejected = False
        self.error_kind: ErrorKind | None = None
        self.stage = DisconnectStage.WAITING  # where a client that leaves finds it
        self.status = 502  # the HTTP status the client got
        # Who sent it, with attribution on: as read (the log's), and the series it counts in.
        self.tenant: str | None = None
        self.tenant_series: TenantSeries | None = None
        # Set by settle: generation tokens counted from chunks, not reported; the longest
        # of the n outputs.
        self.estimated = False
        self.max_generation_tokens = 0
        meters.increment_waiting()

    @property
    def model_name(self) -> str:
        """The model it counts under (with ``--model-name auto``, the one it asked for among
        those served, else "other")."""
        return self._meters.model_name

    # --- while it runs -------------------------------------------------------------------

    def move_to(self, meters: Meters) -> None:
        """Count under other meters from now on (a form's model is known once its fields have
        passed): the gauge it holds moves with it; what it observed stays where it went."""
        old = self._meters
        if meters is old:
            return
        self._meters = meters
        if self._state == _WAITING:
            old.decrement_waiting()
            meters.increment_waiting()
        elif self._state == _RUNNING:
            old.decrement_running()
            meters.increment_running()

    @property
    def settled(self) -> bool:
        return self._state == _DONE

    @property
    def detached(self) -> bool:
        return self._state == _DETACHED

    def slot_acquired(self, now: float | None = None) -> None:
        if self._state != _WAITING:
            return
        meters = self._meters
        now = meters.clock() if now is None else now
        self._state = _RUNNING
        self.slot_at = now
        meters.decrement_waiting()
        meters.increment_running()

    def output(self, index: int = 0, now: float | None = None) -> None:
        """An event carrying generated output for output (choice) ``index`` arrived."""
        now = self._meters.clock() if now is None else now
        last = self.last_output_at
        if last is None:
            self.first_output_at = now
            self._meters.observe_time_to_first_token(now - self.arrival, now)
        else:
            self._meters.observe_inter_token_latency(now - last, now)
        self.last_output_at = now
        self.output_chunks += 1
        if index or self._chunks_by_choice is not None:
            by_choice = self._chunks_by_choice
            if by_choice is None:
                by_choice = self._chunks_by_choice = {0: self.output_chunks - 1}
            by_choice[index] = by_choice.get(index, 0) + 1

    def report_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens
            self.generation_tokens = usage.completion_tokens

    def finish_with(self, word: str | None) -> None:
        """The upstream finished it, saying ``word`` in its API's terms (or nothing)."""
        self.finished_reason = vllm_finished_reason(word)

    def fail(self, kind: ErrorKind) -> None:
        self.error_kind = kind
        self.finished_reason = FinishedReason.ERROR

    def detach(self, now: float | None = None) -> None:
        """Its exchange is over but the work runs on (a background response): the gauges it
        holds go back now, as its slot did, and the account waits for :meth:`settle`."""
        if self._state != _RUNNING:
            return
        self._state = _DETACHED
        self.ended_at = self._meters.clock() if now is None else now  # until it settles
        # Its later outputs go unseen: the decode (and TPOT) they end is not known.
        self.last_output_at = None
        self._meters.decrement_running()

    # --- its end ---------------------------------------------------------------------------

    def settle(self, now: float | None = None) -> bool:
        """Account the request once; later calls return False and change nothing."""
        state = self._state
        if state == _DONE:
            return False
        self._state = _DONE
        meters = self._meters
        self.ended_at = meters.clock() if now is None else now
        if state == _WAITING:
            meters.decrement_waiting()
        elif state == _RUNNING:
            meters.decrement_running()
        if not self.rejected:
            self._count_tokens(ran=state != _WAITING)
            meters.finalize_request(self)
        if self.tenant_series is not None:
            self.tenant_series.settle(self)
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
        """Settle with an outcome, for services that embed the recorder: ``reason`` is the
        upstream's finish_reason, or ``abort``/``error``. Without ``generation_tokens`` the
        output chunks are counted, as an estimate. ``completed`` (default: neither abort nor
        error) decides whether per-request histograms are observed, as vLLM observes them
        only for requests its engine finished."""
        if self._state == _DONE:
            return False
        self.finished_reason = vllm_finished_reason(reason)
        self.prompt_tokens = prompt_tokens
        self.generation_tokens = generation_tokens
        self.completed = completed
        return self.settle(now)

    def discard(self) -> bool:
        """Settle a request the upstream or the queue refused: vLLM's engine never ran it,
        so only the gauges it holds are settled."""
        if self._state == _DONE:
            return False
        self.rejected = True
        return self.settle()

    def _count_tokens(self, *, ran: bool) -> None:
        if self.completed is None:
            self.completed = self.finished_reason not in _UNFINISHED
        self.completed = self.completed and self.slot_at is not None
        if self.generation_tokens is None:
            # No usage: the chunks were counted, an estimate once output was seen or when
            # the upstream finished without reporting usage. A request that failed before
            # any output counts 0, as it showed none.
            self.estimated = ran and (self.output_chunks > 0 or self.completed)
            self.generation_tokens = self.output_chunks
        by_choice = self._chunks_by_choice
        # Usage is a total over the n outputs: the longest one comes from its chunk count.
        self.max_generation_tokens = (
            max(by_choice.values()) if by_choice else self.generation_tokens
        )

    # --- intervals, read once settled ------------------------------------------------------
    # Where vLLM's engine reports its own times (--enable-per-request-metrics), its queue adds
    # to the proxy's, and its prefill and decode replace what the proxy can only see from
    # outside (which holds the engine's queue and the network): as vLLM's own series would.

    @property
    def e2e_seconds(self) -> float:
        end = self.ended_at
        return 0.0 if end is None else end - self.arrival

    @property
    def queue_seconds(self) -> float | None:
        if self.slot_at is None:
            return None
        proxy = self.slot_at - self.arrival
        return proxy if self.engine is None else proxy + self.engine.queue

    @property
    def ttft_seconds(self) -> float | None:
        first = self.first_output_at
        return None if first is None else first - self.arrival

    @property
    def inference_seconds(self) -> float | None:
        if self.engine is not None:
            return self.engine.prefill + self.engine.decode
        slot, end = self.slot_at, self.last_output_at
        if end is None:
            end = self.ended_at
        return None if slot is None or end is None else end - slot

    @property
    def prefill_seconds(self) -> float | None:
        if self.engine is not None:
            return self.engine.prefill
        slot, first = self.slot_at, self.first_output_at
        return None if first is None or slot is None else first - slot

    @property
    def decode_seconds(self) -> float | None:
        if self.engine is not None:
            return self.engine.decode
        first, last = self.first_output_at, self.last_output_at
        return None if first is None or last is None else last - first
