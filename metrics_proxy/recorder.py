"""ProxyMetricsRecorder: a proxy's request events, counted into the families of families.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from metrics_proxy import families
from metrics_proxy.families import HTTP_EXCLUDED_HANDLERS, FamilySpec
from metrics_proxy.model_series import ModelSeries
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

__all__ = [
    "AUTO_MODEL",
    "MAX_MODELS",
    "MAX_MODEL_NAME",
    "OTHER_MODEL",
    "ModelSeries",
    "ProxyMetricsRecorder",
    "ServedModels",
]

_MetricT = TypeVar("_MetricT", Counter, Gauge, Histogram)

# The model_name that labels each request with the model it asks for (--model-name auto).
AUTO_MODEL = "auto"
# With auto, what any request for a model without series counts under.
OTHER_MODEL = "other"
# The bounds of auto's series, whatever the upstream lists: each model costs about 300
# series (every family at zero), so 100 models are some 30,000 series on a scrape.
MAX_MODELS = 100
MAX_MODEL_NAME = 256  # characters; vLLM's served names are paths or short ids


@dataclass(frozen=True, slots=True)
class ServedModels:
    """What one list of served models changed: the models that got series, and how many
    names got none (too long, or past MAX_MODELS)."""

    added: tuple[str, ...]
    refused: int


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
    With ``model_name="auto"`` each request counts under the model it asks for, among those
    given series by :meth:`serve_models` (the upstream's list), any other under "other".
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
        self._metrics = _TableMetrics(self.registry, max_model_len, clock)
        self._bind_http(self._metrics)
        auto = model_name == AUTO_MODEL
        self._default = self._new_series(OTHER_MODEL if auto else model_name)
        # With auto: the series of each model the upstream served, "other" first.
        self._by_model = {OTHER_MODEL: self._default} if auto else None

    # --- the series of each model ---------------------------------------------------------

    @property
    def per_request_model(self) -> bool:
        """Built with ``model_name="auto"``: each request counts under the model it asks for."""
        return self._by_model is not None

    @property
    def models(self) -> tuple[str, ...]:
        """The model names that have series, in the order they got them."""
        return (self.model_name,) if self._by_model is None else tuple(self._by_model)

    def series_for(self, model: object) -> ModelSeries:
        """The series a request asking for ``model`` (a body's "model" member, of any type)
        counts under: with a fixed model name, always its own; with ``auto``, the model's
        when it has series, else "other"."""
        by_model = self._by_model
        if by_model is None or type(model) is not str:
            return self._default
        return by_model.get(model, self._default)

    def serve_models(self, names: Iterable[str]) -> ServedModels:
        """With ``auto``: give series to the models in ``names`` that have none yet (vLLM's
        series exist at zero per model from the start). Bounded: a name over
        MAX_MODEL_NAME characters, or past MAX_MODELS models, gets none (its requests count
        as "other"). A model never loses its series: counters must not vanish mid-life."""
        by_model = self._by_model
        added: list[str] = []
        refused = 0
        if by_model is None:
            return ServedModels((), 0)
        for name in names:
            if name in by_model:
                continue
            if len(name) > MAX_MODEL_NAME or len(by_model) > MAX_MODELS:
                refused += 1
                continue
            by_model[name] = self._new_series(name)
            added.append(name)
        return ServedModels(tuple(added), refused)

    def _new_series(self, model_name: str) -> ModelSeries:
        return ModelSeries(self._metrics, model_name, self.engine, self.clock)

    def _bind_http(self, metrics: _TableMetrics) -> None:
        # Their labelled series appear with their first request, as the instrumentator's do.
        self._http_requests = metrics.get(families.HTTP_REQUESTS, Counter)
        self._http_duration_highr = metrics.get(families.HTTP_REQUEST_DURATION_HIGHR, Histogram)
        self._http_duration = metrics.get(families.HTTP_REQUEST_DURATION, Histogram)
        self._http_children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}

    # --- the seed's names: the series of the fixed model (with auto, of "other") -------------

    def increment_waiting(self) -> None:
        self._default.increment_waiting()

    def decrement_waiting(self) -> None:
        self._default.decrement_waiting()

    def increment_running(self) -> None:
        self._default.increment_running()

    def decrement_running(self) -> None:
        self._default.decrement_running()

    def observe_queue_time(self, seconds: float) -> None:
        self._default.observe_queue_time(seconds)

    def observe_time_to_first_token(self, seconds: float, now: float | None = None) -> None:
        """``now``: the recorder's clock when the token came, if the caller read it."""
        self._default.observe_time_to_first_token(seconds, now)

    def observe_inter_token_latency(self, seconds: float, now: float | None = None) -> None:
        self._default.observe_inter_token_latency(seconds, now)

    def finalize_request(self, record: RequestRecord) -> None:
        """Count one finished request under the fixed model (see ModelSeries)."""
        self._default.finalize_request(record)

    # --- the proxy's own events ---------------------------------------------------------

    # Each takes a member of its families.py StrEnum or, the same thing, its string value.
    # Those outside any one request's model (a bad body, a forwarded path) count under the
    # fixed model, or "other" with auto.

    def count_error(self, kind: str) -> None:
        self._default.count_error(kind)

    def count_disconnect(self, stage: str) -> None:
        self._default.count_disconnect(stage)

    def count_admission_rejection(self, reason: str) -> None:
        self._default.count_admission_rejection(reason)

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

    def start_request(self, now: float | None = None, *, model: object = None) -> RequestRecord:
        """Record one request from its arrival, under the series of ``model`` (see
        :meth:`series_for`); it waits until its slot is acquired."""
        series = self._default if self._by_model is None else self.series_for(model)
        return RequestRecord(series, self.clock() if now is None else now)

    # --- output --------------------------------------------------------------------------

    def collect(self) -> tuple[MetricFamily, ...]:
        return self.registry.collect()

    def snapshot(self) -> dict[str, Any]:
        """Every counter, gauge, histogram and vector as a JSON-ready dict."""
        return self.registry.snapshot()
