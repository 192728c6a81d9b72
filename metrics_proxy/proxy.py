"""Forwarding: any path passes through untouched; completions are metered exchanges."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from metrics_proxy.admission import AdmissionQueue
from metrics_proxy.client_io import (
    ClientGone,
    ClientWriteLimits,
    DeadlineResponse,
    UpstreamFailure,
    abort_connection,
    body_too_slow,
    json_error,
    write_guard,
)
from metrics_proxy.config import Config, seconds_or_none
from metrics_proxy.headers import response_headers
from metrics_proxy.lifecycle import Lifecycle
from metrics_proxy.metered import ExchangeContext, MeteredExchange
from metrics_proxy.payloads import (
    BadRequestBody,
    UsageMode,
    add_usage_request,
    parse_request,
    request_facts,
)
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.routes import handler_label, vllm_path
from metrics_proxy.upstream_client import ClientBodyTimeout, Upstream


class UnsupportedEncoding(ValueError):
    """A metered request arrived with a compressed body."""


class Proxy:
    """Forwards requests to the upstream; meters completions exactly once per outcome."""

    def __init__(
        self,
        config: Config,
        recorder: ProxyMetricsRecorder,
        session: aiohttp.ClientSession,
        queue: AdmissionQueue,
        lifecycle: Lifecycle,
    ) -> None:
        self._recorder = recorder
        self._upstream = Upstream(config, session)
        self._client_writes = ClientWriteLimits(
            seconds_or_none(config.client_write_timeout), seconds_or_none(config.request_timeout)
        )
        self._context = ExchangeContext(
            self._upstream, recorder, queue, lifecycle, self._client_writes
        )
        self._client_timeout = seconds_or_none(config.client_timeout)
        self._usage_mode = UsageMode(config.stream_usage)
        self._max_body = config.max_body_size

    # --- unmetered: any other path ------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Stream any request and its answer through unchanged, without token metrics."""
        clock = self._recorder.clock
        started = clock()
        loop_started = asyncio.get_running_loop().time()
        status = 502
        response: web.StreamResponse | None = None
        try:
            body = request.content if request.body_exists else None
            async with self._upstream.open(request, body) as upstream:
                status = upstream.status
                response = DeadlineResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=response_headers(upstream.headers, body_rewritten=False),
                    limits=self._client_writes,
                    started=loop_started,
                )
                # Guarded: a client gone by now is no upstream failure.
                await write_guard(response.prepare(request))
                try:
                    async for chunk in upstream.content.iter_any():
                        await write_guard(response.write(chunk))
                    await write_guard(response.write_eof())
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # Headers are out: the only honest signal left is a broken connection.
                    self._recorder.count_error(UpstreamFailure.of(exc).kind)
                    abort_connection(request)
                return response
        except (ClientGone, asyncio.CancelledError) as exc:
            status = 499  # the client left: counted as 4xx, as for metered requests
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response()  # nobody is listening any more
        except ClientBodyTimeout:
            self._recorder.count_error("client_timeout")
            status = 408
            return body_too_slow(request, response)
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = UpstreamFailure.of(exc)
            self._recorder.count_error(failure.kind)
            status = failure.status
            return failure.response()
        finally:
            label = handler_label(vllm_path(request.rel_url.raw_path))
            self._recorder.observe_http(label, request.method, status, clock() - started)

    # --- metered: completions -----------------------------------------------------------

    async def metered(self, request: web.Request) -> web.StreamResponse:
        recorder = self._recorder
        arrival = recorder.clock()
        try:
            if request.headers.get("Content-Encoding", "identity").lower() != "identity":
                # vLLM takes no compressed request bodies; the proxy could not read one either.
                raise UnsupportedEncoding(request.headers["Content-Encoding"])
            async with asyncio.timeout(self._client_timeout):
                body = await request.read()
            obj = parse_request(body)
        except asyncio.CancelledError:
            # The client left while sending its body: nothing ran, but the exchange happened.
            recorder.observe_http(request.path, request.method, 499, recorder.clock() - arrival)
            raise
        except UnsupportedEncoding as exc:
            recorder.count_error("bad_request")
            response = json_error(
                415, f"Compressed request bodies are not supported: {exc}", "invalid_request_error"
            )
        except web.RequestPayloadError:
            recorder.count_error("bad_request")  # a malformed chunked body, say
            response = json_error(400, "The request body is malformed", "invalid_request_error")
            response.force_close()
        except TimeoutError:
            recorder.count_error("client_timeout")
            response = json_error(
                408, "The request body did not arrive in time", "invalid_request_error"
            )
            response.force_close()  # the rest of the body may still come: drop the connection
        except web.HTTPRequestEntityTooLarge:
            recorder.count_error("body_too_large")
            response = json_error(
                413,
                f"Request body is larger than the proxy's limit of {self._max_body} bytes",
                "invalid_request_error",
            )
        except BadRequestBody as exc:
            recorder.count_error("bad_request")
            response = json_error(400, str(exc), "invalid_request_error")
        else:
            facts = request_facts(obj)
            upstream_body, injection = add_usage_request(body, obj, facts, self._usage_mode)
            tracker = recorder.start_request(arrival)
            tracker.n = facts.n
            tracker.max_tokens = facts.max_tokens
            exchange = MeteredExchange(self._context, request, tracker, injection, facts.stream)
            return await exchange.run(upstream_body)
        recorder.observe_http(
            request.path, request.method, response.status, recorder.clock() - arrival
        )
        return response
