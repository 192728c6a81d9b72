"""ProxyMetricsRecorder: the one place that names every metric, its help, labels and buckets."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from metrics_proxy import buckets
from metrics_proxy.exposition import snapshot_dict
from metrics_proxy.metrics import Counter, CounterChild, Gauge, Histogram, HistogramChild
from metrics_proxy.process import ProcessCollector
from metrics_proxy.registry import Registry
from metrics_proxy.samples import MetricFamily
from metrics_proxy.tracker import FinishedRequest, RequestTracker

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
# The OpenAI API's names for a normal finish that vLLM's engine counts as "stop".
_STOP_ALIASES = frozenset({"tool_calls", "function_call", "eos", "stop_sequence", "end_turn"})
_REASON_LABEL = re.compile(r"^[a-z_]{1,32}$")

ERROR_KINDS = (
    "bad_request",  # malformed body, answered 400 without contacting the upstream
    "body_too_large",  # request body over --max-body-size, answered 413
    "connect",  # upstream unreachable, answered 502
    "timeout",  # an upstream timeout fired, answered 504 or the stream was cut
    "upstream_status",  # the upstream answered 4xx/5xx, passed through
    "upstream_disconnect",  # the upstream connection failed mid-response
    "client_timeout",  # the client did not send its body within --client-timeout, 408
    "upstream_stream_error",  # the upstream reported an error in an event of its stream
    "upstream_event_too_large",  # an unfinished stream event outgrew the proxy's bound
)
DISCONNECT_STAGES = ("waiting", "before_headers", "streaming")
# vLLM's two reasons, and the proxy's own: a request that waited past --max-queue-wait.
ADMISSION_REJECTION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens", "max_queue_wait")

_MODEL_ENGINE = ("model_name", "engine")

# Requests the instrumentator behind vLLM's API server leaves out of http_* series.
HTTP_EXCLUDED_HANDLERS = frozenset(
    {"/metrics", "/health", "/load", "/ping", "/version", "/server_info"}
)


_MetricT = TypeVar("_MetricT", Counter, Gauge, Histogram)


def finished_reason_label(reason: str | None) -> str:
    """Map an upstream finish_reason onto vLLM's label values (unknown tidy ones pass)."""
    if reason is None or reason in _STOP_ALIASES:
        return "stop"
    if reason in FINISHED_REASONS or _REASON_LABEL.match(reason):
        return reason
    return "stop"


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


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
        recorder.render_text()      # Prometheus text
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
        labels = (model_name, engine)
        token_buckets = buckets.build_1_2_5_buckets(max_model_len)

        def gauge(name: str, help_text: str) -> Gauge:
            return self._register(Gauge(name, help_text, _MODEL_ENGINE))

        def counter(name: str, help_text: str) -> Counter:
            return self._register(Counter(name, help_text, _MODEL_ENGINE))

        def histogram(name: str, help_text: str, bounds: tuple[float, ...]) -> Histogram:
            return self._register(Histogram(name, help_text, _MODEL_ENGINE, bounds))

        # --- vLLM families (names, help, labels and buckets exactly as vLLM 0.33 exports) ---
        self._running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        ).labels(*labels)
        self._waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        ).labels(*labels)
        waiting_by_reason = self._register(
            Gauge(
                "vllm:num_requests_waiting_by_reason",
                "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
                "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA "
                "budget, KV transfer, blocked status). Sum of all reasons equals "
                "vllm:num_requests_waiting.",
                (*_MODEL_ENGINE, "reason"),
            )
        )
        # The proxy's queue only ever waits for capacity; "deferred" stays 0 but exists, as in vLLM.
        self._waiting_capacity = waiting_by_reason.labels(*labels, "capacity")
        waiting_by_reason.labels(*labels, "deferred")
        self._prompt_tokens = counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed."
        ).labels(*labels)
        self._generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        ).labels(*labels)
        success = self._register(
            Counter(
                "vllm:request_success",
                "Count of successfully processed requests.",
                (*_MODEL_ENGINE, "finished_reason"),
            )
        )
        self._success = success
        self._success_by_reason = {r: success.labels(*labels, r) for r in FINISHED_REASONS}
        rejections = self._register(
            Counter(
                "vllm:admission_rejections",
                "Number of admission attempts rejected by a queue limit, by reason.",
                ("model_name", "reason"),
            )
        )
        self._rejections = {
            r: rejections.labels(model_name, r) for r in ADMISSION_REJECTION_REASONS
        }
        self._request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        ).labels(*labels)
        self._request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        ).labels(*labels)
        self._request_max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        ).labels(*labels)
        self._request_params_n = histogram(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            buckets.REQUEST_PARAMS_N,
        ).labels(*labels)
        self._request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            token_buckets,
        ).labels(*labels)
        self._ttft = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            buckets.TIME_TO_FIRST_TOKEN,
        ).labels(*labels)
        self._itl = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            buckets.INTER_TOKEN_LATENCY,
        ).labels(*labels)
        self._tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            buckets.INTER_TOKEN_LATENCY,
        ).labels(*labels)
        self._e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            buckets.REQUEST_LATENCY,
        ).labels(*labels)
        self._queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            buckets.REQUEST_LATENCY,
        ).labels(*labels)
        self._inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            buckets.REQUEST_LATENCY,
        ).labels(*labels)
        self._prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            buckets.REQUEST_LATENCY,
        ).labels(*labels)
        self._decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            buckets.REQUEST_LATENCY,
        ).labels(*labels)

        # --- the HTTP families of vLLM's API server (prometheus-fastapi-instrumentator) ---
        self._http_requests = self._register(
            Counter(
                "http_requests_total",
                "Total number of requests by method, status and handler.",
                ("method", "status", "handler"),
            )
        )
        self._http_duration_highr = self._register(
            Histogram(
                "http_request_duration_highr_seconds",
                "Latency with many buckets but no API specific labels. Made for more accurate "
                "percentile calculations. ",
                (),
                buckets.HTTP_REQUEST_DURATION_HIGHR,
            )
        )
        self._http_duration = self._register(
            Histogram(
                "http_request_duration_seconds",
                "Latency with only few buckets by handler. Made to be only used if aggregation "
                "by handler is important. ",
                ("method", "handler"),
                buckets.HTTP_REQUEST_DURATION,
            )
        )

        self._http_children: dict[tuple[str, str, int], tuple[CounterChild, HistogramChild]] = {}

        # --- the proxy's own series: what the engine cannot see ---
        errors = self._register(
            Counter(
                "proxy_errors",
                "Requests that failed or were refused, by kind (see the README for the kinds).",
                (*_MODEL_ENGINE, "kind"),
            )
        )
        self._errors = {kind: errors.labels(*labels, kind) for kind in ERROR_KINDS}
        disconnects = self._register(
            Counter(
                "proxy_client_disconnects",
                "Requests whose client went away before the response was complete, by stage "
                "(waiting in the proxy queue, before response headers, while streaming).",
                (*_MODEL_ENGINE, "stage"),
            )
        )
        self._disconnects = {s: disconnects.labels(*labels, s) for s in DISCONNECT_STAGES}
        self._estimated = counter(
            "proxy_estimated_token_counts",
            "Finished requests whose generation tokens were estimated from stream chunks "
            "because the upstream reported no usage for them.",
        ).labels(*labels)

    def _register(self, metric: _MetricT) -> _MetricT:
        self.registry.register(metric)
        return metric

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

    def observe_time_to_first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_inter_token_latency(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def finalize_request(self, result: FinishedRequest) -> None:
        """Count one finished request: its reason, tokens, and (when the upstream finished
        it, as vLLM's engine would) its per-request histograms."""
        reason = finished_reason_label(result.finished_reason)
        child = self._success_by_reason.get(reason)
        if child is None:
            child = self._success.labels(self.model_name, self.engine, reason)
        child.inc()
        if result.prompt_tokens is not None:
            self._prompt_tokens.inc(result.prompt_tokens)
        self._generation_tokens.inc(result.generation_tokens)
        if result.estimated:
            self._estimated.inc()
        if not result.completed:
            return
        if result.prompt_tokens is not None:
            self._request_prompt_tokens.observe(result.prompt_tokens)
        self._request_generation_tokens.observe(result.generation_tokens)
        self._request_max_generation_tokens.observe(result.max_generation_tokens)
        self._request_params_n.observe(result.n)
        if result.max_tokens is not None:
            self._request_params_max_tokens.observe(result.max_tokens)
        self._e2e.observe(result.e2e_seconds)
        if result.inference_seconds is not None:
            self._inference_time.observe(result.inference_seconds)
        if result.prefill_seconds is not None and result.decode_seconds is not None:
            self._prefill_time.observe(result.prefill_seconds)
            self._decode_time.observe(result.decode_seconds)
            tokens = result.generation_tokens
            self._tpot.observe(result.decode_seconds / (tokens - 1) if tokens > 1 else 0.0)

    # --- the proxy's own events ---------------------------------------------------------

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

    def start_request(self, now: float | None = None) -> RequestTracker:
        """Track one request from its arrival; it waits until its slot is acquired."""
        return RequestTracker(self, self.clock() if now is None else now)

    # --- output --------------------------------------------------------------------------

    def collect(self) -> tuple[MetricFamily, ...]:
        return self.registry.collect()

    def snapshot(self) -> dict[str, Any]:
        """Every counter, gauge, histogram and vector as a JSON-ready dict."""
        return snapshot_dict(self.collect())
