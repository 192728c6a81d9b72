"""The aiohttp application: routes, the upstream session's lifetime, and serving it."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from metrics_proxy import request_ids
from metrics_proxy.access_log import log_metered, log_refusal
from metrics_proxy.admission import AdmissionQueue, tenant_cap
from metrics_proxy.apis import API_BY_ROUTE, Api, ApiChoice
from metrics_proxy.apis.base import UsageMode
from metrics_proxy.apis.responses import RESPONSES
from metrics_proxy.arrival_stamps import ArrivalSite, take_arrival
from metrics_proxy.attribution import Attribution
from metrics_proxy.auth import BearerTokens, split_tokens
from metrics_proxy.background import HeldResponses, RetrievalWatch, retrieved_id
from metrics_proxy.client_io import ClientWriteLimits
from metrics_proxy.config import Config, ConfigError, seconds_or_none
from metrics_proxy.engine_scraper import EngineScraper, engine_metrics_url
from metrics_proxy.errors import CLIENT_GONE, json_error
from metrics_proxy.forwarding import Forwarder
from metrics_proxy.lifecycle import Lifecycle, StopSignals, drain
from metrics_proxy.log_safety import install_log_guard, mask_url
from metrics_proxy.metered import MeteredContext, handle_metered
from metrics_proxy.model_watch import ModelWatch
from metrics_proxy.prometheus import CONTENT_TYPE_TEXT, render_json, render_text
from metrics_proxy.readiness import UpstreamProbe
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.resend import ReuseNotingConnector
from metrics_proxy.routes import (
    ADMIN_PATHS,
    handler_label,
    is_disguised,
    is_engine_metrics,
    needs_api_key,
    vllm_path,
)
from metrics_proxy.simulated_upstream import proxy_traffic, simulated_upstream
from metrics_proxy.startup_check import check_upstream
from metrics_proxy.upstream_client import NOT_ADDED, Upstream, request_class
from metrics_proxy.websocket_relay import is_websocket_upgrade

CONFIG = web.AppKey("config", Config)
RECORDER = web.AppKey("recorder", ProxyMetricsRecorder)
QUEUE = web.AppKey("queue", AdmissionQueue)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
FORWARDER = web.AppKey("forwarder", Forwarder)
METERED = web.AppKey("metered", MeteredContext)
PROBE = web.AppKey("probe", UpstreamProbe)
ADMIN_TOKENS = web.AppKey("admin_tokens", BearerTokens)
API_KEYS = web.AppKey("api_keys", BearerTokens)
HELD = web.AppKey("held", HeldResponses)
UPSTREAM = web.AppKey("upstream", Upstream)
ATTRIBUTION: web.AppKey[Attribution | None] = web.AppKey("attribution")
ENGINE_SCRAPER = web.AppKey("engine_scraper", EngineScraper)

_HEALTHY = orjson.dumps({"status": "ok"})

log = logging.getLogger("metrics_proxy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def upstream_ssl(config: Config) -> ssl.SSLContext | bool:
    """How to verify an https upstream: a CA bundle, the system's CAs, or (loudly) not at all."""
    if config.upstream_insecure:
        return False
    if not config.upstream_ca_bundle:
        return True
    try:
        return ssl.create_default_context(cafile=config.upstream_ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"invalid value for --upstream-ca-bundle (PROXY_UPSTREAM_CA_BUNDLE): "
            f"{config.upstream_ca_bundle!r} cannot be loaded: {exc}",
            setting="upstream_ca_bundle",
        ) from None


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession for the app's lifetime, with no pool cap (the queue is the cap), no
    cookie jar (clients must not share cookies), and no header or decoding of its own.

    Idle connections leave the pool before the upstream would close them (uvicorn, vLLM's
    server, does after 5 s; aiohttp keeps them 15 s), or a request sent on one as it closes
    fails, since aiohttp does not send a POST again; the connector lets the proxy do so."""
    config = app[CONFIG]
    connector = ReuseNotingConnector(
        limit=0,
        limit_per_host=0,
        ssl=upstream_ssl(config),
        keepalive_timeout=config.upstream_keepalive_timeout,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=NOT_ADDED,
        request_class=request_class(),
        timeout=aiohttp.ClientTimeout(total=None),
    ) as session:
        recorder = app[RECORDER]
        upstream = Upstream(config, session)
        client_writes = ClientWriteLimits(
            seconds_or_none(config.client_write_timeout), seconds_or_none(config.request_timeout)
        )
        app[FORWARDER] = Forwarder(upstream, recorder, client_writes)
        app[METERED] = MeteredContext(
            upstream,
            recorder,
            app[QUEUE],
            app[LIFECYCLE],
            client_writes,
            usage_mode=UsageMode(config.stream_usage),
            client_timeout=seconds_or_none(config.client_timeout),
            max_body=config.max_body_size,
            held=app[HELD],
            attribution=app[ATTRIBUTION],
        )
        app[PROBE] = UpstreamProbe(session, config.upstream_url, clock=recorder.clock)
        app[UPSTREAM] = upstream
        scraper = app.get(ENGINE_SCRAPER)
        if scraper is not None:
            scraper.session = session  # the upstream's TLS settings hold for it
        yield
        if scraper is not None:
            await scraper.close()


async def _model_watch(app: web.Application) -> AsyncIterator[None]:
    """With --model-name auto, the upstream's model list, read now and on its timer for as
    long as the app runs (a shutdown cancels a read under way)."""
    watch = ModelWatch(app[UPSTREAM], app[RECORDER], app[CONFIG])
    task = asyncio.create_task(watch.run())
    yield
    task.cancel()
    await asyncio.wait([task])


def _refuse(request: web.Request, status: int, message: str, error_type: str) -> web.Response:
    """An answer the proxy gives itself, the upstream never asked: logged with its reason."""
    log_refusal(request, status, message)
    return json_error(status, message, error_type)


def _wrong_method(request: web.Request, allowed: str) -> web.Response | None:
    """405 for a method the route does not take (the route takes them all, so that a wrong
    one is answered here rather than forwarded)."""
    method = request.method
    if method == allowed or (allowed == "GET" and method == "HEAD"):
        return None
    message = f"Method {method} is not allowed here"
    response = _refuse(request, 405, message, "invalid_request_error")
    response.headers["Allow"] = allowed
    return response


def _method_guard(allowed: str, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        return _wrong_method(request, allowed) or await handler(request)

    return guarded


def _unauthorized(tokens: BearerTokens, request: web.Request, what: str) -> web.Response | None:
    """401 unless the request carries one of ``tokens`` (none configured: open)."""
    if not tokens or tokens.accept(request.headers.get("Authorization")):
        return None
    response = _refuse(request, 401, f"A valid {what} is required", "auth_error")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _admin(handler: Handler) -> Handler:
    """With --admin-token, the metrics routes need it as a bearer token (probes stay open)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        refused = _unauthorized(request.app[ADMIN_TOKENS], request, "admin bearer token")
        return refused or await handler(request)

    return checked


def refusal(app: web.Application, request: web.Request, path: str) -> web.Response | None:
    """Why a request to the upstream must not go there, decided on the path vLLM would
    route (``path``, see routes.py), or None. Checked before the body is read."""
    # aiohttp routed on the path with '/' and '%' still encoded: where that differs from
    # what vLLM routes on, a path the proxy serves itself must not slip past it.
    if path != request.rel_url.path_safe and is_disguised(path):
        return _refuse(
            request,
            400,
            "Percent-encoded '/' or '%' in the path of a route the proxy serves itself",
            "invalid_request_error",
        )
    if is_engine_metrics(path):
        return _unauthorized(app[ADMIN_TOKENS], request, "admin bearer token")
    config = app[CONFIG]
    if not config.allow_admin_routes and path in ADMIN_PATHS:
        return _refuse(
            request,
            403,
            "vLLM's administrative routes are not served through the proxy "
            "(see --allow-admin-routes)",
            "permission_error",
        )
    if needs_api_key(path) and request.method != "OPTIONS":
        return _unauthorized(app[API_KEYS], request, "API key")
    return None


async def _metrics_text(request: web.Request) -> web.Response:
    if request.app[CONFIG].disable_metrics_endpoint:
        return _refuse(request, 404, "The /metrics endpoint is disabled", "not_found")
    scraper = request.app.get(ENGINE_SCRAPER)
    # The engine's first: the proxy's own series then tell how that went.
    engine = await scraper.families() if scraper is not None else ()
    body = render_text(request.app[RECORDER].collect(), engine)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_TEXT})


async def _metrics_json(request: web.Request) -> web.Response:
    return web.Response(
        body=render_json(request.app[RECORDER].collect()), content_type="application/json"
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHY, content_type="application/json")


async def _readyz(request: web.Request) -> web.Response:
    """Ready when not draining and the upstream answers (checked cheaply, cached)."""
    if request.app[LIFECYCLE].draining:
        status, body = 503, {"status": "draining"}
    elif await request.app[PROBE].upstream_ok():
        status, body = 200, {"status": "ready", "upstream": "ok"}
    else:
        status, body = 503, {"status": "upstream_unavailable"}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _in_flight(handler: Handler, allowed: str | None = None) -> Handler:
    """Every request for the upstream passes here: refused if it must not go there,
    counted for a graceful shutdown and refused once draining, and observed in the http_*
    series, the one place they are (a client that left counts as CLIENT_GONE); with ``allowed``,
    also the method check (one wrapper on the hot path, not two)."""

    async def tracked(request: web.Request) -> web.StreamResponse:
        app = request.app  # each request.app is three property lookups: asked once
        recorder = app[RECORDER]
        started = take_arrival(request, recorder.clock)
        request_ids.assign(request.headers.get(request_ids.HEADER))
        path = vllm_path(request.rel_url.raw_path)
        status = CLIENT_GONE  # unless an answer says otherwise: the handler was cancelled
        try:
            response: web.StreamResponse | None = _refused(app, request, path, allowed)
            if response is None:
                lifecycle = app[LIFECYCLE]
                lifecycle.enter()
                try:
                    response = await handler(request)
                finally:
                    lifecycle.leave()
            status = response.status
            return response
        except Exception:
            status = 500  # a bug of the proxy's: aiohttp answers 500
            raise
        finally:
            # A WebSocket is no HTTP exchange to vLLM's instrumentator either; a request
            # without an Upgrade header (nearly every one) is none.
            if "Upgrade" not in request.headers or not is_websocket_upgrade(request):
                seconds = recorder.clock() - started
                recorder.observe_http(handler_label(path), request.method, status, seconds)

    return tracked


def _refused(
    app: web.Application, request: web.Request, path: str, allowed: str | None
) -> web.Response | None:
    """The answer to a request the proxy will not pass on, or None."""
    refused = refusal(app, request, path)
    if refused is not None:
        return refused
    if allowed is not None and (wrong := _wrong_method(request, allowed)) is not None:
        return wrong
    if app[LIFECYCLE].draining:
        response = _refuse(request, 503, "The proxy is shutting down", "overloaded_error")
        response.force_close()
        return response
    return None


def _metered(api: Api | ApiChoice) -> Handler:
    async def metered(request: web.Request) -> web.StreamResponse:
        return await handle_metered(request.app[METERED], api, request)

    return metered


async def _forward(request: web.Request) -> web.StreamResponse:
    response_id = retrieved_id(vllm_path(request.rel_url.raw_path))
    if response_id is not None and request.app[HELD].holds(response_id):
        return await _forward_held(request, response_id)
    return await request.app[FORWARDER].forward(request)


async def _forward_held(request: web.Request, response_id: str) -> web.StreamResponse:
    """An answer about a background response the proxy holds: passed through as any other,
    and read on its way; the first that shows the response finished counts it."""
    watch = RetrievalWatch(RESPONSES)
    response = await request.app[FORWARDER].forward(request, watch.reader)
    record = request.app[HELD].settle(response_id, watch.finish())
    if record is not None:
        log_metered(request, record)
    return response


async def _answer_with_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """The request's id goes back to its client, unless the upstream's answer has its own."""
    request_id = request_ids.current()
    if request_id is not None and request_ids.HEADER not in response.headers:
        response.headers[request_ids.HEADER] = request_id


def create_app(config: Config, *, recorder: ProxyMetricsRecorder | None = None) -> web.Application:
    """The proxy application; everything it needs is built here, nothing at import."""
    app = web.Application(
        client_max_size=config.max_body_size,
        # Bodies pass as the client sent them: aiohttp would otherwise inflate a compressed
        # body while its Content-Encoding header still says otherwise.
        handler_args={"access_log": None, "auto_decompress": False},
    )
    app[CONFIG] = config
    app[ADMIN_TOKENS] = BearerTokens((config.admin_token,) if config.admin_token else ())
    app[API_KEYS] = BearerTokens(split_tokens(config.api_key))
    app[RECORDER] = recorder or ProxyMetricsRecorder(
        config.model_name, engine=config.engine_label, max_model_len=config.max_model_len
    )
    recorder = app[RECORDER]
    app[ATTRIBUTION] = Attribution.of(config, recorder.registry, recorder.clock)
    app[QUEUE] = AdmissionQueue(
        config.max_concurrency,
        max_waiting=config.max_queue_length,
        max_wait=config.max_queue_wait,
        tenant_cap=tenant_cap(config.max_concurrency, config.tenant_max_share),
    )
    app[LIFECYCLE] = Lifecycle()
    app[HELD] = HeldResponses(app[RECORDER].clock)
    _add_engine_scraper(app, config)
    app.cleanup_ctx.append(_upstream_session)
    if app[RECORDER].per_request_model:
        app.cleanup_ctx.append(_model_watch)  # its first read is the start-up check
    app.on_response_prepare.append(_answer_with_request_id)
    router = app.router
    router.add_route("*", "/metrics", _method_guard("GET", _admin(_metrics_text)))
    router.add_route("*", "/internal/metrics", _method_guard("GET", _admin(_metrics_json)))
    router.add_route("*", "/internal/healthz", _method_guard("GET", _healthz))
    router.add_route("*", "/internal/readyz", _method_guard("GET", _readyz))
    for path, api in API_BY_ROUTE.items():
        router.add_route("*", path, _in_flight(_metered(api), "POST"))
    router.add_route("*", "/{tail:.*}", _in_flight(_forward))
    return app


def _add_engine_scraper(app: web.Application, config: Config) -> None:
    """With --engine-metrics(-url), the scraper whose proxy_engine_scrape_* series join the
    proxy's registry now; it reads the engine once the upstream session is open."""
    url = engine_metrics_url(config)
    if url is None:
        return
    recorder = app[RECORDER]
    scraper = EngineScraper(url, config.engine_metrics_timeout, recorder.collect)
    recorder.registry.register(scraper)
    app[ENGINE_SCRAPER] = scraper


# Each request in flight holds a few dozen young objects (frames, futures, its record), which
# reference counting frees when it ends. Past CPython's 700, every few requests set off a
# young collection that finds nothing to free: at 16 requests in flight that was 4 % of the
# CPU per request, at 64 over 5 %. This many leaves collections to real growth (a pause
# scanning 10,000 objects is well under a millisecond).
YOUNG_COLLECTION_THRESHOLD = 10_000


def _tune_collector() -> None:
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's scans, which otherwise show up in the latency tail under load.
    gc.freeze()
    _, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *older)


async def serve(config: Config, *, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``), then shut down gracefully: refuse new work
    and report not-ready, give in-flight requests the grace period, end what remains (each
    counted as an abort), and return the exit status: 0, or 130 when a second Ctrl-C cut
    the drain short.

    A client that disconnects cancels its handler (handler_cancellation), so a request
    waiting in the queue or for upstream headers gives up its place at once. With
    --simulate, the simulated vLLM serves beside the proxy until the proxy is done."""
    install_log_guard()  # before the first client: aiohttp's records about them quote requests
    async with simulated_upstream(config) as upstream_config:
        return await _serve_proxy(upstream_config, stop)


async def _serve_proxy(config: Config, stop: asyncio.Event | None) -> int:
    if config.upstream_insecure:
        log.warning(
            "TLS verification of the upstream is OFF (--upstream-insecure): anyone on the path "
            "to %s can read and change the traffic",
            mask_url(config.upstream_url),
        )
    app = create_app(config)
    # Handlers still running after our own grace period are cancelled almost at once: the
    # half second lets the streams the drain ended write their error event and finish.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()  # opens the upstream session: a bad CA bundle stops us here, unbound
    try:
        await _listen(runner, config)
        _tune_collector()
        signals = StopSignals(stop or asyncio.Event())
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, signals.terminate)
        loop.add_signal_handler(signal.SIGINT, signals.interrupt)
        # Logged once a signal would be handled: whoever waits for this line may send one.
        log.info(
            "metrics_proxy listening on %s, upstream %s, model %s",
            ", ".join(map(str, runner.addresses)),
            mask_url(config.upstream_url),
            config.model_name,
        )
        # With --model-name auto the model watch makes the same check as it starts.
        checks = [] if app[RECORDER].per_request_model else [_start_check(app)]
        try:
            async with proxy_traffic(config, runner.addresses):  # --simulate's, if asked
                await signals.drain.wait()
        finally:
            for check in checks:
                check.cancel()  # a shutdown never waits for the upstream to answer it
                await asyncio.wait([check])
        status = await drain(app[LIFECYCLE], config.shutdown_grace_period, signals)
    finally:
        await runner.cleanup()
    log.info("stopped")
    return status


def _start_check(app: web.Application) -> asyncio.Task[list[str] | None]:
    return asyncio.create_task(check_upstream(app[UPSTREAM], app[CONFIG]))


async def _listen(runner: web.AppRunner, config: Config) -> None:
    """Bind the port, or exit: 2 with one line when --host is no address of this machine
    (a bad setting), 1 when the address cannot be had now (the port is taken, say)."""
    site = ArrivalSite(runner, config.host, config.port)
    try:
        await site.start()
    except socket.gaierror as exc:
        raise ConfigError(
            f"invalid value for --host (PROXY_HOST): {config.host!r} does not resolve "
            f"({exc.strerror})",
            setting="host",
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"invalid value for --host (PROXY_HOST): {config.host!r} is no address of this "
                f"machine ({os.strerror(exc.errno)})",
                setting="host",
            ) from None
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc.strerror)
        raise SystemExit(1) from None


def run_app(config: Config) -> None:
    """Serve until a signal ends a graceful shutdown (the ``aiohttp-proxy`` command); exit
    130 when a second Ctrl-C cut the drain short."""
    status = asyncio.run(serve(config))
    if status:
        raise SystemExit(status)
