"""ProxyMetricsRecorder: a proxy's request events, counted into the families of families.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from metrics_proxy import families
from metrics_proxy.families import (
    HTTP_EXCLUDED_HANDLERS,
    DisconnectStage,
    ErrorKind,
    FamilySpec,
    FinishedReason,
    RejectionReason,
    WaitingReason,
)
from metrics_proxy.prometheus.metrics import (
    Counter,
    CounterChild,
    Gauge,
    Histogram,
    HistogramChild,
)
from metrics_proxy.prometheus.process import ProcessCollector
from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.prometheus.samples import MetricFamily
from metrics_proxy.record import RequestRecord
from metrics_proxy.routes import method_label

_MetricT = TypeVar("_MetricT", Counter, Gauge, Histogram)


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


# Histograms of counts: their quantile sketches report small integers exactly (n=1 is 1).
_COUNT_HISTOGRAMS = frozenset(
    spec.name
    for spec in (
        families.REQUEST_PROMPT_TOKENS,
        families.REQUEST_GENERATION_TOKENS,
        families.REQUEST_MAX_NUM_GENERATION_TOKENS,
        families.REQUEST_PARAMS_N,
        families.REQUEST_PARAMS_MAX_TOKENS,
    )
)


def _new_metric(
    spec: FamilySpec, max_model_len: int, clock: Callable[[], float]
) -> Counter | Gauge | Histogram:
    """The metric ``spec`` declares, its token buckets (if any) sized for ``max_model_len``;
    ``clock`` moves the recent window of each histogram's quantile sketch."""
    if spec.type == "histogram":
        return Histogram(
            spec.name,
            spec.help,
            spec.labels,
            spec.bounds(max_model_len),
            integer_valued=spec.name in _COUNT_HISTOGRAMS,
            clock=clock,
        )
    if spec.type == "counter":
        return Counter(spec.name, spec.help, spec.labels)
    return Gauge(spec.name, spec.help, spec.labels)


class _TableMetrics:
    """Every family of the table, built and registered in the table's order."""

    def __init__(self, registry: Registry, max_model_len: int, clock: Callable[[], float]) -> None:
        self._by_name: dict[str, Counter | Gauge | Histogram] = {}
        for spec in families.FAMILIES:
            metric = self._by_name[spec.name] = _new_metric(spec, max_model_len, clock)
            registry.register(metric)

    def get(self, spec: FamilySpec, kind: type[_MetricT]) -> _MetricT:
        metric = self._by_name[spec.name]
        if not isinstance(metric, kind):
            raise TypeError(f"{spec.name} is a {spec.type}, not a {kind.__name__}")
        return metric


class ProxyMetricsRecorder:
    """Every vLLM family a proxy can observe on the wire, plus the proxy's own series.

    Built for one ``model_name``, one ``engine`` label value and a ``max_model_len`` that
    sizes the token histograms as vLLM does. All series exist at zero from the start.
    Not thread-safe by design: call it from the event loop only.

    Example::

        recorder = ProxyMetricsRecorder("my-model", engine="proxy", max_model_len=8192)
        request = recorder.start_request()
        request.slot_acquired()
        request.output()            # each chunk that carries generated tokens
        request.finish("stop", prompt_tokens=12, generation_tokens=40)
        render_text(recorder.registry)  # Prometheus text (metrics_proxy.prometheus)
    """

    def __init__(
        self,
        model_name: str,
        engine: str = "proxy",
        max_model_len: int = 8192,
        *,
        registry: Registry | None = None,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
        self.model_name = model_name
        self.engine = engine
        self.max_model_len = max_model_len
        self.clock = clock
        self.registry = registry if registry is not None else Registry()
        if process_metrics:
            self.registry.register(ProcessCollector())
        metrics = _TableMetrics(self.registry, max_model_len, clock)
        self._bind_request_gauges(metrics)
        self._bind_request_counters(metrics)
        self._bind_request_histograms(metrics)
        self._bind_http(metrics)
        self._bind_proxy_series(metrics)

    # --- the children each event moves, looked up once ---------------------------------------

    def _bind_request_gauges(self, metrics: _TableMetrics) -> None:
        labels = (self.model_name, self.engine)
        self._running = metrics.get(families.NUM_REQUESTS_RUNNING, Gauge).labels(*labels)
        self._waiting = metrics.get(families.NUM_REQUESTS_WAITING, Gauge).labels(*labels)
        by_reason = metrics.get(families.NUM_REQUESTS_WAITING_BY_REASON, Gauge)
        # Every reason exists at zero, as in vLLM, though the proxy's queue only waits for
        # capacity.
        waiting = {r.value: by_reason.labels(*labels, r.value) for r in WaitingReason}
        self._waiting_capacity = waiting[WaitingReason.CAPACITY.value]

    def _bind_request_counters(self, metrics: _TableMetrics) -> None:
        labels = (self.model_name, self.engine)
        self._prompt_tokens = metrics.get(families.PROMPT_TOKENS, Counter).labels(*labels)
        self._generation_tokens = metrics.get(families.GENERATION_TOKENS, Counter).labels(*labels)
        self._success = metrics.get(families.REQUEST_SUCCESS, Counter)
        self._success_by_reason = {
            r.value: self._success.labels(*labels, r.value) for r in FinishedReason
        }
        rejections = metrics.get(families.ADMISSION_REJECTIONS, Counter)
        self._rejections = {
            r.value: rejections.labels(self.model_name, r.value) for r in RejectionReason
        }

    def _bind_request_histograms(self, metrics: _TableMetrics) -> None:
        def child(spec: FamilySpec) -> HistogramChild:
            return metrics.get(spec, Histogram).labels(self.model_name, self.engine)

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

    def _bind_http(self, metrics: _TableMetrics) -> None:
        # Their labelled series appear with their first request, as the instrumentator's do.
        self._http_requests = metrics.get(families.HTTP_REQUESTS, Counter)
        self._http_duration_highr = metrics.get(families.HTTP_REQUEST_DURATION_HIGHR, Histogram)
        self._http_duration = metrics.get(families.HTTP_REQUEST_DURATION, Histogram)
        self._http_children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}

    def _bind_proxy_series(self, metrics: _TableMetrics) -> None:
        labels = (self.model_name, self.engine)
        errors = metrics.get(families.PROXY_ERRORS, Counter)
        self._errors = {k.value: errors.labels(*labels, k.value) for k in ErrorKind}
        disconnects = metrics.get(families.PROXY_CLIENT_DISCONNECTS, Counter)
        self._disconnects = {s.value: disconnects.labels(*labels, s.value) for s in DisconnectStage}
        estimated = metrics.get(families.PROXY_ESTIMATED_TOKEN_COUNTS, Counter)
        self._estimated = estimated.labels(*labels)

    # --- the seed's names ---------------------------------------------------------------

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

    def finalize_request(self, record: RequestRecord) -> None:
        """Count one finished request: its reason, tokens, and (when the upstream finished
        it, as vLLM's engine would) its per-request histograms."""
        reason = record.finished_reason
        child = self._success_by_reason.get(reason)
        if child is None:
            child = self._success.labels(self.model_name, self.engine, reason)
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

    # --- the proxy's own events ---------------------------------------------------------

    # Each takes a member of its families.py StrEnum or, the same thing, its string value.

    def count_error(self, kind: str) -> None:
        self._errors[kind].inc()

    def count_disconnect(self, stage: str) -> None:
        self._disconnects[stage].inc()

    def count_admission_rejection(self, reason: str) -> None:
        self._rejections[reason].inc()

    def observe_http(self, handler: str, method: str, status: int, seconds: float) -> None:
        """One HTTP exchange, as vLLM's instrumentator counts it (status as ``2xx`` etc.)."""
        if handler in HTTP_EXCLUDED_HANDLERS:
            return
        method = method_label(method)
        key = (handler, method, status // 100)
        children = self._http_children.get(key)
        if children is None:
            # Label validation and child lookup once per (handler, method, status class).
            children = self._http_children[key] = (
                self._http_requests.labels(method, _status_class(status), handler),
                self._http_duration.labels(method, handler),
            )
        children[0].inc()
        children[1].observe(seconds)
        self._http_duration_highr.observe(seconds)

    def start_request(self, now: float | None = None) -> RequestRecord:
        """Record one request from its arrival; it waits until its slot is acquired."""
        return RequestRecord(self, self.clock() if now is None else now)

    # --- output --------------------------------------------------------------------------

    def collect(self) -> tuple[MetricFamily, ...]:
        return self.registry.collect()

    def snapshot(self) -> dict[str, Any]:
        """Every counter, gauge, histogram and vector as a JSON-ready dict."""
        return self.registry.snapshot()
