"""Errors: OpenAI's error shape, and how every failure maps to an answer and an error kind,
in one place."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from metrics_proxy.apis.base import BadRequestBody
from metrics_proxy.families import ErrorKind

JSON = "application/json"


def error_body(message: str, error_type: str, code: int | str) -> bytes:
    """The JSON body the openai SDK understands for a failed request."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code}})


def error_event(message: str, error_type: str, code: int | str, name: str | None = None) -> bytes:
    """The same error as one SSE event, ending a stream the client is already reading: the
    openai SDK raises ``APIError`` when a streamed event carries ``error``. A ``name``d
    event (the API's name for its error events) also says its type in its data, as
    Anthropic's do, and the anthropic SDK raises on it."""
    if name is None:
        return b"data: " + error_body(message, error_type, code) + b"\n\n"
    error = {"message": message, "type": error_type, "code": code}
    data = orjson.dumps({"type": name, "error": error})
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def json_error(status: int, message: str, error_type: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(message, error_type, status), content_type=JSON
    )


# The status of an exchange whose client left: nginx's 499, a 4xx in the http_* series.
CLIENT_GONE = 499


def gone() -> web.Response:
    """What a handler returns once its client has left: nobody reads it, and its status is
    what the http_* series count."""
    return web.Response(status=CLIENT_GONE)


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """An upstream failure: its error kind and the answer the client gets."""

    kind: ErrorKind
    status: int
    message: str
    # Whether the request may have reached the upstream: a refused or timed-out connect
    # never did, so vLLM's engine never saw it and no vLLM request series counts it.
    reached: bool = True

    @staticmethod
    def of(exc: BaseException) -> UpstreamFailure:
        # Order matters: aiohttp's connect timeout is both a connector error and a TimeoutError.
        if isinstance(exc, TimeoutError):
            reached = not isinstance(exc, aiohttp.ConnectionTimeoutError)
            return UpstreamFailure(ErrorKind.TIMEOUT, 504, "Upstream timed out", reached)
        if isinstance(exc, aiohttp.ClientConnectorError):
            message = f"Upstream unreachable: {exc.os_error}"
            return UpstreamFailure(ErrorKind.CONNECT, 502, message, reached=False)
        return UpstreamFailure(
            ErrorKind.UPSTREAM_DISCONNECT, 502, f"Upstream failed: {type(exc).__name__}"
        )

    def response(self) -> web.Response:
        error_type = "upstream_timeout" if self.status == 504 else "upstream_error"
        return json_error(self.status, self.message, error_type)

    def event(self, name: str | None = None) -> bytes:
        """The error event that ends a stream already under way (``name``: error_event's)."""
        if self.kind is ErrorKind.TIMEOUT:
            return error_event("Upstream timed out mid-stream", "upstream_error", 502, name)
        return error_event("Upstream connection failed mid-stream", "upstream_error", 502, name)


class UnsupportedEncoding(ValueError):
    """A metered request arrived with a compressed body."""


@dataclass(frozen=True, slots=True)
class RequestFailure:
    """A request the proxy answers itself because its body cannot be used."""

    kind: ErrorKind
    status: int
    message: str
    close: bool  # the rest of the body may still come: drop the connection

    @staticmethod
    def of(exc: Exception, max_body: int) -> RequestFailure | None:
        """The answer to an exception met reading a request body, or None if it is none."""
        if isinstance(exc, UnsupportedEncoding):  # the client's header is not echoed back
            message = "Compressed request bodies are not supported"
            return RequestFailure(ErrorKind.BAD_REQUEST, 415, message, close=False)
        if isinstance(exc, web.RequestPayloadError):  # a malformed chunked body, say
            message = "The request body is malformed"
            return RequestFailure(ErrorKind.BAD_REQUEST, 400, message, close=True)
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            message = "The request body did not arrive in time"
            return RequestFailure(ErrorKind.CLIENT_TIMEOUT, 408, message, close=True)
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            message = f"Request body is larger than the proxy's limit of {max_body} bytes"
            return RequestFailure(ErrorKind.BODY_TOO_LARGE, 413, message, close=False)
        if isinstance(exc, BadRequestBody):
            return RequestFailure(ErrorKind.BAD_REQUEST, 400, str(exc), close=False)
        return None

    def response(self) -> web.Response:
        response = json_error(self.status, self.message, "invalid_request_error")
        if self.close:
            response.force_close()
        return response


CLIENT_BODY_TIMEOUT = RequestFailure(
    ErrorKind.CLIENT_TIMEOUT, 408, "The request body did not arrive in time", close=True
)
