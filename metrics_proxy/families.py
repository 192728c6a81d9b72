"""Every metric family the proxy exports, as data: vLLM's (names, help, labels and buckets exactly
as vLLM 0.33 exports them), the HTTP families of vLLM's API server, and the proxy's own; with
the closed sets of label values they take. The recorder builds its metrics from this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from metrics_proxy import buckets
from metrics_proxy.prometheus.samples import MetricType

# Bounds fixed in advance, or computed from max_model_len (vLLM's token histograms).
Buckets = tuple[float, ...] | Callable[[int], tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class FamilySpec:
    """One family: ``name`` as exposed (counters end in ``_total``), ``buckets`` only for
    histograms."""

    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]
    buckets: Buckets = ()

    def bounds(self, max_model_len: int) -> tuple[float, ...]:
        """The histogram's bucket bounds for a model of ``max_model_len`` tokens."""
        return self.buckets if isinstance(self.buckets, tuple) else self.buckets(max_model_len)


# --- the closed sets of label values: every one exists at zero from start-up -----------------


class FinishedReason(StrEnum):
    """vLLM's ``finished_reason`` values."""

    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"
    REPETITION = "repetition"


class WaitingReason(StrEnum):
    """vLLM's reasons a request waits. The proxy's queue only ever waits for capacity;
    ``deferred`` stays 0 but exists, as in vLLM."""

    CAPACITY = "capacity"
    DEFERRED = "deferred"


class RejectionReason(StrEnum):
    """vLLM's two admission limits, and the proxy's own: a request that waited past
    --max-queue-wait."""

    MAX_NUM_QUEUED_REQS = "max_num_queued_reqs"
    MAX_NUM_QUEUED_TOKENS = "max_num_queued_tokens"
    MAX_QUEUE_WAIT = "max_queue_wait"


class ErrorKind(StrEnum):
    """Why a request failed or was refused (``proxy_errors_total{kind}``)."""

    # a malformed body, answered 400 without contacting the upstream
    BAD_REQUEST = "bad_request"
    # a request body over --max-body-size, answered 413
    BODY_TOO_LARGE = "body_too_large"
    # the upstream unreachable, answered 502
    CONNECT = "connect"
    # an upstream timeout fired, answered 504 or the stream was cut
    TIMEOUT = "timeout"
    # the upstream answered 4xx/5xx, passed through
    UPSTREAM_STATUS = "upstream_status"
    # the upstream connection failed mid-response
    UPSTREAM_DISCONNECT = "upstream_disconnect"
    # the client did not send its body within --client-timeout, 408
    CLIENT_TIMEOUT = "client_timeout"
    # the upstream reported an error in an event of its stream
    UPSTREAM_STREAM_ERROR = "upstream_stream_error"
    # an unfinished stream event outgrew the proxy's bound
    UPSTREAM_EVENT_TOO_LARGE = "upstream_event_too_large"


class EngineScrapeError(StrEnum):
    """Why an engine's /metrics gave nothing, or less than all it had
    (``proxy_engine_scrape_errors_total{kind}``)."""

    # no answer within --engine-metrics-timeout
    TIMEOUT = "timeout"
    # the engine unreachable, or its connection closed before the answer was whole
    CONNECT = "connect"
    # an answer other than 200
    STATUS = "status"
    # an answer past the size bound (decoded, when it came compressed)
    TOO_LARGE = "too_large"
    # an answer in a Content-Encoding other than gzip or deflate, or one that does not decode
    ENCODING = "encoding"
    # an error of the proxy's own while reading or parsing the answer (a bug): logged by type
    INTERNAL = "internal"
    # one per line left out: not the text format, a bad escape, a duplicate series, a bound
    INVALID_LINE = "invalid_line"
    # one per family left out (its type differs from the proxy's family of that name, or its
    # sample names are the proxy's) and one per series left out (it would print exactly as
    # one of the proxy's, or has an origin label of its own where the engine's get one)
    CONFLICT = "conflict"


class DisconnectStage(StrEnum):
    """Where a client went away (``proxy_client_disconnects_total{stage}``)."""

    WAITING = "waiting"  # in the proxy's queue
    BEFORE_HEADERS = "before_headers"
    STREAMING = "streaming"


# Requests the instrumentator behind vLLM's API server leaves out of http_* series.
HTTP_EXCLUDED_HANDLERS = frozenset(
    {"/metrics", "/health", "/load", "/ping", "/version", "/server_info"}
)

# --- the table -------------------------------------------------------------------------------

MODEL_ENGINE = ("model_name", "engine")

NUM_REQUESTS_RUNNING = FamilySpec(
    "vllm:num_requests_running",
    "gauge",
    "Number of requests in model execution batches.",
    MODEL_ENGINE,
)
NUM_REQUESTS_WAITING = FamilySpec(
    "vllm:num_requests_waiting",
    "gauge",
    "Number of requests waiting to be processed.",
    MODEL_ENGINE,
)
NUM_REQUESTS_WAITING_BY_REASON = FamilySpec(
    "vllm:num_requests_waiting_by_reason",
    "gauge",
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling "
    "capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, "
    "blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    (*MODEL_ENGINE, "reason"),
)
PROMPT_TOKENS = FamilySpec(
    "vllm:prompt_tokens_total",
    "counter",
    "Number of prefill tokens processed.",
    MODEL_ENGINE,
)
GENERATION_TOKENS = FamilySpec(
    "vllm:generation_tokens_total",
    "counter",
    "Number of generation tokens processed.",
    MODEL_ENGINE,
)
REQUEST_SUCCESS = FamilySpec(
    "vllm:request_success_total",
    "counter",
    "Count of successfully processed requests.",
    (*MODEL_ENGINE, "finished_reason"),
)
ADMISSION_REJECTIONS = FamilySpec(
    "vllm:admission_rejections_total",
    "counter",
    "Number of admission attempts rejected by a queue limit, by reason.",
    ("model_name", "reason"),
)
REQUEST_PROMPT_TOKENS = FamilySpec(
    "vllm:request_prompt_tokens",
    "histogram",
    "Number of prefill tokens processed.",
    MODEL_ENGINE,
    buckets.build_1_2_5_buckets,
)
REQUEST_GENERATION_TOKENS = FamilySpec(
    "vllm:request_generation_tokens",
    "histogram",
    "Number of generation tokens processed.",
    MODEL_ENGINE,
    buckets.build_1_2_5_buckets,
)
REQUEST_MAX_NUM_GENERATION_TOKENS = FamilySpec(
    "vllm:request_max_num_generation_tokens",
    "histogram",
    "Histogram of maximum number of requested generation tokens.",
    MODEL_ENGINE,
    buckets.build_1_2_5_buckets,
)
REQUEST_PARAMS_N = FamilySpec(
    "vllm:request_params_n",
    "histogram",
    "Histogram of the n request parameter.",
    MODEL_ENGINE,
    buckets.REQUEST_PARAMS_N,
)
REQUEST_PARAMS_MAX_TOKENS = FamilySpec(
    "vllm:request_params_max_tokens",
    "histogram",
    "Histogram of the max_tokens request parameter.",
    MODEL_ENGINE,
    buckets.build_1_2_5_buckets,
)
TIME_TO_FIRST_TOKEN = FamilySpec(
    "vllm:time_to_first_token_seconds",
    "histogram",
    "Histogram of time to first token in seconds.",
    MODEL_ENGINE,
    buckets.TIME_TO_FIRST_TOKEN,
)
INTER_TOKEN_LATENCY = FamilySpec(
    "vllm:inter_token_latency_seconds",
    "histogram",
    "Histogram of inter-token latency in seconds.",
    MODEL_ENGINE,
    buckets.INTER_TOKEN_LATENCY,
)
REQUEST_TIME_PER_OUTPUT_TOKEN = FamilySpec(
    "vllm:request_time_per_output_token_seconds",
    "histogram",
    "Histogram of time_per_output_token_seconds per request.",
    MODEL_ENGINE,
    buckets.INTER_TOKEN_LATENCY,
)
E2E_REQUEST_LATENCY = FamilySpec(
    "vllm:e2e_request_latency_seconds",
    "histogram",
    "Histogram of e2e request latency in seconds.",
    MODEL_ENGINE,
    buckets.REQUEST_LATENCY,
)
REQUEST_QUEUE_TIME = FamilySpec(
    "vllm:request_queue_time_seconds",
    "histogram",
    "Histogram of time spent in WAITING phase for request.",
    MODEL_ENGINE,
    buckets.REQUEST_LATENCY,
)
REQUEST_INFERENCE_TIME = FamilySpec(
    "vllm:request_inference_time_seconds",
    "histogram",
    "Histogram of time spent in RUNNING phase for request.",
    MODEL_ENGINE,
    buckets.REQUEST_LATENCY,
)
REQUEST_PREFILL_TIME = FamilySpec(
    "vllm:request_prefill_time_seconds",
    "histogram",
    "Histogram of time spent in PREFILL phase for request.",
    MODEL_ENGINE,
    buckets.REQUEST_LATENCY,
)
REQUEST_DECODE_TIME = FamilySpec(
    "vllm:request_decode_time_seconds",
    "histogram",
    "Histogram of time spent in DECODE phase for request.",
    MODEL_ENGINE,
    buckets.REQUEST_LATENCY,
)

# prometheus-fastapi-instrumentator's, as vLLM's API server exports them (trailing spaces its own).
HTTP_REQUESTS = FamilySpec(
    "http_requests_total",
    "counter",
    "Total number of requests by method, status and handler.",
    ("method", "status", "handler"),
)
HTTP_REQUEST_DURATION_HIGHR = FamilySpec(
    "http_request_duration_highr_seconds",
    "histogram",
    "Latency with many buckets but no API specific labels. Made for more accurate "
    "percentile calculations. ",
    (),
    buckets.HTTP_REQUEST_DURATION_HIGHR,
)
HTTP_REQUEST_DURATION = FamilySpec(
    "http_request_duration_seconds",
    "histogram",
    "Latency with only few buckets by handler. Made to be only used if aggregation "
    "by handler is important. ",
    ("method", "handler"),
    buckets.HTTP_REQUEST_DURATION,
)

# The proxy's own: what the engine cannot see.
PROXY_ERRORS = FamilySpec(
    "proxy_errors_total",
    "counter",
    "Requests that failed or were refused, by kind (see the README for the kinds).",
    (*MODEL_ENGINE, "kind"),
)
PROXY_CLIENT_DISCONNECTS = FamilySpec(
    "proxy_client_disconnects_total",
    "counter",
    "Requests whose client went away before the response was complete, by stage "
    "(waiting in the proxy queue, before response headers, while streaming).",
    (*MODEL_ENGINE, "stage"),
)
PROXY_ESTIMATED_TOKEN_COUNTS = FamilySpec(
    "proxy_estimated_token_counts_total",
    "counter",
    "Finished requests whose token counts were estimated because the upstream reported "
    "no usage for them (generation tokens from the chunks that carried output).",
    MODEL_ENGINE,
)

# Attribution (opt-in: --tenant-header, --tenant-from-api-key): registered only when it is on,
# so a proxy without it exports none of them. A tenant's series appear with its first request;
# at most --tenant-limit tenants get their own, the rest share TENANT_OTHER.
MODEL_ENGINE_TENANT = (*MODEL_ENGINE, "tenant")
TENANT_REQUESTS = FamilySpec(
    "proxy_tenant_requests_total",
    "counter",
    "Requests by tenant and outcome: vLLM's finished_reason, or 'rejected' for a request no "
    "engine ran (refused by the proxy's queue limits or the upstream).",
    (*MODEL_ENGINE_TENANT, "outcome"),
)
TENANT_PROMPT_TOKENS = FamilySpec(
    "proxy_tenant_prompt_tokens_total",
    "counter",
    "Prefill tokens processed, by tenant.",
    MODEL_ENGINE_TENANT,
)
TENANT_GENERATION_TOKENS = FamilySpec(
    "proxy_tenant_generation_tokens_total",
    "counter",
    "Generation tokens processed, by tenant.",
    MODEL_ENGINE_TENANT,
)
TENANT_QUEUE_TIME = FamilySpec(
    "proxy_tenant_queue_time_seconds",
    "histogram",
    "Histogram of time spent waiting for a slot, by tenant (as vllm:request_queue_time_seconds).",
    MODEL_ENGINE_TENANT,
    buckets.REQUEST_LATENCY,
)
# A request no engine ran; the other outcomes are FinishedReason's values.
REJECTED_OUTCOME = "rejected"
# The tenant of every request past --tenant-limit distinct ones, and of requests that name
# none (or a name the proxy will not use as a label).
TENANT_OTHER = "other"
TENANT_UNKNOWN = "unknown"
# The engine's scrape, when --engine-metrics re-exports the engine's series.
ENGINE_SCRAPE_UP = FamilySpec(
    "proxy_engine_scrape_up",
    "gauge",
    "1 if the engine's /metrics was read whole at the last fetch, else 0.",
    (),
)
ENGINE_SCRAPE_DURATION = FamilySpec(
    "proxy_engine_scrape_duration_seconds",
    "gauge",
    "How long the last fetch of the engine's /metrics took, in seconds.",
    (),
)
ENGINE_SCRAPE_ERRORS = FamilySpec(
    "proxy_engine_scrape_errors_total",
    "counter",
    "Fetches of the engine's /metrics that failed, and lines and families of it left out, "
    "by kind (see the README for the kinds).",
    ("kind",),
)

VLLM_FAMILIES = (
    NUM_REQUESTS_RUNNING,
    NUM_REQUESTS_WAITING,
    NUM_REQUESTS_WAITING_BY_REASON,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    REQUEST_SUCCESS,
    ADMISSION_REJECTIONS,
    REQUEST_PROMPT_TOKENS,
    REQUEST_GENERATION_TOKENS,
    REQUEST_MAX_NUM_GENERATION_TOKENS,
    REQUEST_PARAMS_N,
    REQUEST_PARAMS_MAX_TOKENS,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    REQUEST_TIME_PER_OUTPUT_TOKEN,
    E2E_REQUEST_LATENCY,
    REQUEST_QUEUE_TIME,
    REQUEST_INFERENCE_TIME,
    REQUEST_PREFILL_TIME,
    REQUEST_DECODE_TIME,
)
HTTP_FAMILIES = (HTTP_REQUESTS, HTTP_REQUEST_DURATION_HIGHR, HTTP_REQUEST_DURATION)
PROXY_FAMILIES = (PROXY_ERRORS, PROXY_CLIENT_DISCONNECTS, PROXY_ESTIMATED_TOKEN_COUNTS)
TENANT_FAMILIES = (
    TENANT_REQUESTS,
    TENANT_PROMPT_TOKENS,
    TENANT_GENERATION_TOKENS,
    TENANT_QUEUE_TIME,
)
# In the order /metrics shows them (after the process collector's).
FAMILIES = (*VLLM_FAMILIES, *HTTP_FAMILIES, *PROXY_FAMILIES)
# Only with --engine-metrics, after those.
ENGINE_SCRAPE_FAMILIES = (ENGINE_SCRAPE_UP, ENGINE_SCRAPE_DURATION, ENGINE_SCRAPE_ERRORS)

# --- which of the engine's families join the proxy's (--engine-metrics) ----------------------

# Only vLLM's own families: the engine's http_* would count each request the proxy forwarded
# a second time, and its process_* and python_info describe another process under the names
# of the proxy's own.
ENGINE_NAMESPACE = "vllm:"
# The engine's series print exactly as vLLM prints them, but in a family both print whose
# labels have no "engine" (vLLM's admission rejections), where no label of vLLM's could tell
# the engine's series from the proxy's: there every engine series gets this one, which the
# proxy's never carry. Decided per family, from the proxy's declared labels, never per series.
ENGINE_ORIGIN = ("origin", "engine")
MARKED_WITH_ORIGIN = frozenset(
    spec.name
    for spec in FAMILIES
    if spec.name.startswith(ENGINE_NAMESPACE) and "engine" not in spec.labels
)
# The families both count, request by request: never taken from the engine, which would count
# every request twice. Exactly those of the README's relabel rule for scraping vLLM too.
COUNTED_BY_BOTH = frozenset(
    spec.name
    for spec in (
        PROMPT_TOKENS,
        GENERATION_TOKENS,
        REQUEST_SUCCESS,
        *(spec for spec in VLLM_FAMILIES if spec.type == "histogram"),
    )
)
