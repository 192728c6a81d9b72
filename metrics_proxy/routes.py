"""What a request path is to the proxy, decided on the path vLLM will see; pure, no I/O.

aiohttp routes on a path in which ``%2F`` stays encoded, while uvicorn (vLLM's server) decodes
a path once, ``%2F`` included, before routing. Every decision here (metered or not, guarded or
not, refused or not, which ``handler`` label) is made on the path as uvicorn decodes it, so a
client cannot spell a route in a way that one side sees and the other does not.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote

from metrics_proxy.apis import METERED_PATHS

# The proxy's own routes: never forwarded.
PROXY_PATHS: Final = frozenset(
    {"/metrics", "/internal/metrics", "/internal/healthz", "/internal/readyz"}
)
# vLLM serves its Prometheus page on every path that starts like this (a Mount plus a regex).
METRICS_PREFIX: Final = "/metrics"
# The paths vLLM's --api-key leaves open: probes, version, metrics, API docs. Every other
# path needs the key (vLLM 0.33 guards /v1, /v2, /inference and /cohere; newer releases, all
# but these), and so does every other path here, since the upstream key goes with it.
PUBLIC_PATHS: Final = frozenset(
    {
        "/health", "/ping", "/load", "/version", "/docs", "/docs/oauth2-redirect", "/redoc",
        "/openapi.json",
    }
)  # fmt: skip

# vLLM's routes, the http_* "handler" label they get; any other path is "none", as vLLM's
# instrumentator labels untemplated paths, so a client cannot grow the series without bound.
VLLM_PATHS: Final = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings",
        "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
        "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/realtime",
        "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank",
        "/v1/rerank", "/v2/rerank", "/v2/embed", "/cohere/v2/chat", "/inference/v1/generate",
        "/v1/chat/completions/batch", "/v1/decisions", "/generative_scoring", "/invocations",
        "/health", "/ping", "/version", "/load", "/server_info",
    }
)  # fmt: skip
# Templated routes keep their template as the label: (prefix, suffix, template).
_TEMPLATES: Final = (
    ("/v1/responses/", "/cancel", "/v1/responses/{response_id}/cancel"),
    ("/v1/responses/", "", "/v1/responses/{response_id}"),
)

# vLLM's administrative routes: they change or stop the engine, and are no client's business.
# The proxy refuses them unless --allow-admin-routes says otherwise.
ADMIN_PATHS: Final = frozenset(
    {
        "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/sleep", "/wake_up", "/pause",
        "/resume", "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache",
        "/start_profile", "/stop_profile", "/collective_rpc", "/abort_requests",
        "/update_weights", "/init_weight_transfer_engine", "/scale_elastic_ep",
    }
)  # fmt: skip

# Method label values: anything else (the pure-Python parser takes any token) is one value.
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"}
)
OTHER_METHOD: Final = "other"


def vllm_path(raw_path: str) -> str:
    """The path as uvicorn hands it to vLLM's router: percent-decoded exactly once.

    ``raw_path`` is the request target's path without its query. Invalid UTF-8 decodes to
    U+FFFD, as there; nothing else is normalised (no dot segments, no slash folding).
    """
    return unquote(raw_path) if "%" in raw_path else raw_path


def is_disguised(path: str) -> bool:
    """Whether a decoded path that aiohttp routed elsewhere names a route the proxy
    handles itself (spelled with an encoded ``/`` or ``%`` to get past it)."""
    return path in METERED_PATHS or path in PROXY_PATHS


def needs_api_key(path: str) -> bool:
    return path not in PUBLIC_PATHS and not path.startswith(METRICS_PREFIX)


def is_engine_metrics(path: str) -> bool:
    """Any path vLLM answers with its own metrics page (``/metrics/``, ``/metricsX``, …)."""
    return path.startswith(METRICS_PREFIX)


def handler_label(path: str) -> str:
    """The http_* ``handler`` label vLLM's instrumentator gives this (decoded) path."""
    if path in VLLM_PATHS:
        return path
    for prefix, suffix, template in _TEMPLATES:
        if path.startswith(prefix) and path.endswith(suffix):
            middle = path[len(prefix) : len(path) - len(suffix)]
            if middle and "/" not in middle:
                return template
    return "none"


def method_label(method: str) -> str:
    """The http_* ``method`` label: a known method, or one value for all the others."""
    return method if method in _METHODS else OTHER_METHOD
