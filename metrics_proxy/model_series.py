"""ModelSeries: the children of every model-labelled family for one model_name, bound once, so
that each event of a request moves a child it already holds (no label lookup per chunk)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from metrics_proxy import families
from metrics_proxy.families import (
    DisconnectStage,
    ErrorKind,
    FamilySpec,
    FinishedReason,
    RejectionReason,
    WaitingReason,
)
from metrics_proxy.prometheus.metrics import Counter, Gauge, Histogram, HistogramChild
from metrics_proxy.record import RequestRecord

__all__ = ["FamilyTable", "ModelSeries"]

_MetricT = TypeVar("_MetricT", Counter, Gauge, Histogram)


class FamilyTable(Protocol):
    """Where a model's series find their families (the recorder's registered metrics)."""

    def get(self, spec: FamilySpec, kind: type[_MetricT]) -> _MetricT: ...


class ModelSeries:
    """One model's series of every vLLM family (and the proxy's own that carry model_name),
    all at zero from the moment they are bound, as vLLM's are per engine. A request's record
    holds the series of its model and moves them (:class:`metrics_proxy.record.Meters`).
    Not thread-safe by design: the event loop only."""

    __slots__ = (
        "_decode_time",
        "_disconnects",
        "_e2e",
        "_errors",
        "_estimated",
        "_generation_tokens",
        "_inference_time",
        "_itl",
        "_labels",
        "_prefill_time",
        "_prompt_tokens",
        "_queue_time",
        "_rejections",
        "_request_generation_tokens",
        "_request_max_generation_tokens",
        "_request_params_max_tokens",
        "_request_params_n",
        "_request_prompt_tokens",
        "_running",
        "_success",
        "_success_by_reason",
        "_tpot",
        "_ttft",
        "_waiting",
        "_waiting_capacity",
        "clock",
        "model_name",
    )

    def __init__(
        self, table: FamilyTable, model_name: str, engine: str, clock: Callable[[], float]
    ) -> None:
        self.model_name = model_name
        self.clock = clock
        self._labels = (model_name, engine)
        self._bind_gauges(table)
        self._bind_counters(table)
        self._bind_histograms(table)
        self._bind_proxy_series(table)

    def _bind_gauges(self, table: FamilyTable) -> None:
        labels = self._labels
        self._running = table.get(families.NUM_REQUESTS_RUNNING, Gauge).labels(*labels)
        self._waiting = table.get(families.NUM_REQUESTS_WAITING, Gauge).labels(*labels)
        by_reason = table.get(families.NUM_REQUESTS_WAITING_BY_REASON, Gauge)
        # Every reason exists at zero, as in vLLM, though the proxy's queue only waits for
        # capacity.
        waiting = {r.value: by_reason.labels(*labels, r.value) for r in WaitingReason}
        self._waiting_capacity = waiting[WaitingReason.CAPACITY.value]

    def _bind_counters(self, table: FamilyTable) -> None:
        labels = self._labels
        self._prompt_tokens = table.get(families.PROMPT_TOKENS, Counter).labels(*labels)
        self._generation_tokens = table.get(families.GENERATION_TOKENS, Counter).labels(*labels)
        self._success = table.get(families.REQUEST_SUCCESS, Counter)
        self._success_by_reason = {
            r.value: self._success.labels(*labels, r.value) for r in FinishedReason
        }
        rejections = table.get(families.ADMISSION_REJECTIONS, Counter)
        # vLLM labels its rejections with the model alone (no engine).
        self._rejections = {
            r.value: rejections.labels(self.model_name, r.value) for r in RejectionReason
        }

    def _bind_histograms(self, table: FamilyTable) -> None:
        def child(spec: FamilySpec) -> HistogramChild:
            return table.get(spec, Histogram).labels(*self._labels)

        self._request_prompt_tokens = child(families.REQUEST_PROMPT_TOKENS)
        self._request_generation_tokens = child(families.REQUEST_GENERATION_TOKENS)
        self._request_max_generation_tokens = child(families.REQUEST_MAX_NUM_GENERATION_TOKENS)
        self._request_params_n = child(families.REQUEST_PARAMS_N)
        self._request_params_max_tokens = child(families.REQUEST_PARAMS_MAX_TOKENS)
        self._ttft = child(families.TIME_TO_FIRST_TOKEN)
        self._itl = child(families.INTER_TOKEN_LATENCY)
        self._tpot = child(families.REQUEST_TIME_PER_OUTPUT_TOKEN)
        self._e2e = child(families.E2E_REQUEST_LATENCY)
        self._queue_time = child(families.REQUEST_QUEUE_TIME)
        self._inference_time = child(families.REQUEST_INFERENCE_TIME)
        self._prefill_time = child(families.REQUEST_PREFILL_TIME)
        self._decode_time = child(families.REQUEST_DECODE_TIME)

    def _bind_proxy_series(self, table: FamilyTable) -> None:
        labels = self._labels
        errors = table.get(families.PROXY_ERRORS, Counter)
        self._errors = {k.value: errors.labels(*labels, k.value) for k in ErrorKind}
        disconnects = table.get(families.PROXY_CLIENT_DISCONNECTS, Counter)
        self._disconnects = {s.value: disconnects.labels(*labels, s.value) for s in DisconnectStage}
        estimated = table.get(families.PROXY_ESTIMATED_TOKEN_COUNTS, Counter)
        self._estimated = estimated.labels(*labels)

    # --- what a record moves while it runs --------------------------------------------------

    def increment_waiting(self) -> None:
        self._waiting.inc()
        self._waiting_capacity.inc()

    def decrement_waiting(self) -> None:
        self._waiting.dec()
        self._waiting_capacity.dec()

    def increment_running(self) -> None:
        self._running.inc()

    def decrement_running(self) -> None:
        self._running.dec()

    def observe_queue_time(self, seconds: float) -> None:
        self._queue_time.observe(seconds)

    def observe_time_to_first_token(self, seconds: float, now: float | None = None) -> None:
        """``now``: the recorder's clock when the token came, if the caller read it."""
        self._ttft.observe(seconds, now)

    def observe_inter_token_latency(self, seconds: float, now: float | None = None) -> None:
        self._itl.observe(seconds, now)

    # --- a request's account, once -----------------------------------------------------------

    def finalize_request(self, record: RequestRecord) -> None:
        """Count one finished request: its reason, tokens, and (when the upstream finished
        it, as vLLM's engine would) its per-request histograms."""
        reason = record.finished_reason
        child = self._success_by_reason.get(reason)
        if child is None:
            child = self._success.labels(*self._labels, reason)
        child.inc()
        prompt_tokens = record.prompt_tokens
        generation_tokens = record.generation_tokens or 0
        if prompt_tokens is not None:
            self._prompt_tokens.inc(prompt_tokens)
        self._generation_tokens.inc(generation_tokens)
        if record.estimated:
            self._estimated.inc()
        queue = record.queue_seconds
        if queue is not None:  # observed at the end, as vLLM does: counted requests only
            self._queue_time.observe(queue)
        if not record.completed:
            return
        if prompt_tokens is not None:
            self._request_prompt_tokens.observe(prompt_tokens)
        self._request_generation_tokens.observe(generation_tokens)
        self._request_max_generation_tokens.observe(record.max_generation_tokens)
        self._request_params_n.observe(record.n)
        if record.max_tokens is not None:
            self._request_params_max_tokens.observe(record.max_tokens)
        self._observe_intervals(record, generation_tokens)

    def _observe_intervals(self, record: RequestRecord, generation_tokens: int) -> None:
        self._e2e.observe(record.e2e_seconds)
        inference = record.inference_seconds
        if inference is not None:
            self._inference_time.observe(inference)
        prefill, decode = record.prefill_seconds, record.decode_seconds
        if prefill is not None and decode is not None:
            self._prefill_time.observe(prefill)
            self._decode_time.observe(decode)
            tpot = decode / (generation_tokens - 1) if generation_tokens > 1 else 0.0
            self._tpot.observe(tpot)

    # --- the proxy's own events of this model's requests -------------------------------------

    # Each takes a member of its families.py StrEnum or, the same thing, its string value.

    def count_error(self, kind: str) -> None:
        self._errors[kind].inc()

    def count_disconnect(self, stage: str) -> None:
        self._disconnects[stage].inc()

    def count_admission_rejection(self, reason: str) -> None:
        self._rejections[reason].inc()

    def start_request(self, now: float | None = None) -> RequestRecord:
        """Record one request of this model from its arrival; it waits for its slot."""
        return RequestRecord(self, self.clock() if now is None else now)
