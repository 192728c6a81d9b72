"""The aiohttp application: routes, the upstream session's lifetime, and running it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from metrics_proxy.admission import AdmissionQueue
from metrics_proxy.config import Config
from metrics_proxy.exposition import CONTENT_TYPE_TEXT, render_json, render_text
from metrics_proxy.proxy import Proxy, json_error
from metrics_proxy.recorder import ProxyMetricsRecorder

CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", ProxyMetricsRecorder)
QUEUE = web.AppKey("queue", AdmissionQueue)
PROXY = web.AppKey("proxy", Proxy)

METERED_PATHS = ("/v1/chat/completions", "/v1/completions")
_HEALTHY = orjson.dumps({"status": "ok"})

log = logging.getLogger("metrics_proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession for the app's lifetime, with no pool cap (the queue is the cap), no
    cookie jar (clients must not share cookies), and no header or decoding of its own."""
    config = app[CONFIG]
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:
        app[PROXY] = Proxy(config, app[RECORDER], session, app[QUEUE])
        yield


def _method_guard(allowed: str, handler: Handler) -> Handler:
    # Registered for every method so a wrong one gets 405 here rather than being forwarded.
    async def guarded(request: web.Request) -> web.StreamResponse:
        if request.method != allowed and not (allowed == "GET" and request.method == "HEAD"):
            response = json_error(
                405, f"Method {request.method} is not allowed here", "invalid_request_error"
            )
            response.headers["Allow"] = allowed
            return response
        return await handler(request)

    return guarded


async def _metrics_text(request: web.Request) -> web.Response:
    if request.app[CONFIG].disable_metrics_endpoint:
        return json_error(404, "The /metrics endpoint is disabled", "not_found")
    body = render_text(request.app[RECORDER].collect())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_TEXT})


async def _metrics_json(request: web.Request) -> web.Response:
    return web.Response(
        body=render_json(request.app[RECORDER].collect()), content_type="application/json"
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHY, content_type="application/json")


async def _metered(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].metered(request)


async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].forward(request)


def create_app(config: Config, *, recorder: ProxyMetricsRecorder | None = None) -> web.Application:
    """The proxy application; everything it needs is built here, nothing at import."""
    app = web.Application(client_max_size=config.max_body_size, handler_args={"access_log": None})
    app[CONFIG] = config
    app[RECORDER] = recorder or ProxyMetricsRecorder(
        config.model_name, engine=config.engine_label, max_model_len=config.max_model_len
    )
    app[QUEUE] = AdmissionQueue(config.max_concurrency)
    app.cleanup_ctx.append(_upstream_session)
    router = app.router
    router.add_route("*", "/metrics", _method_guard("GET", _metrics_text))
    router.add_route("*", "/internal/metrics", _method_guard("GET", _metrics_json))
    router.add_route("*", "/internal/healthz", _method_guard("GET", _healthz))
    for path in METERED_PATHS:
        router.add_route("*", path, _method_guard("POST", _metered))
    router.add_route("*", "/{tail:.*}", _forward)
    return app


def run_app(config: Config) -> None:
    """Serve until interrupted. A client that disconnects cancels its handler, so a request
    waiting in the queue or for upstream headers gives up its place at once."""
    log.info(
        "metrics_proxy listening on %s:%s, upstream %s, model %s",
        config.host,
        config.port,
        config.upstream_url,
        config.model_name,
    )
    web.run_app(
        create_app(config),
        host=config.host,
        port=config.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )
