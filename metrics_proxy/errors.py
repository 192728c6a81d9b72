"""Errors: OpenAI's error shape, and how every failure maps to an answer and an error kind,
in one place."""

from __future__ import annotations

import asyncio
import os
import socket
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
            # Never the OS error: it names the upstream's address, which is the log's to say.
            return UpstreamFailure(ErrorKind.CONNECT, 502, "Upstream unreachable", reached=False)
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


class UpstreamWriteTimeout(TimeoutError):
    """Sending the request body to the upstream took longer than --write-timeout."""


# Upstream failures, as the log describes them: which timeout fired and when, what refused.
_HEAD = "reading the answer's head"
_MID_BODY = "mid-body"
_STREAM_FAILURES = {
    ErrorKind.UPSTREAM_STREAM_ERROR: "an error event in the upstream's stream",
    ErrorKind.UPSTREAM_EVENT_TOO_LARGE: "an unfinished event in the upstream's stream outgrew "
    "the proxy's bound",
    ErrorKind.UPSTREAM_DISCONNECT: "the upstream ended its answer without finishing it",
}


def upstream_cause(exc: BaseException, *, answered: bool) -> str:
    """What failed between the proxy and the upstream, for the log. ``answered``: the
    answer's head had come. Never the exception's text, which may quote the upstream's bytes
    or the request's URL."""
    phase = _MID_BODY if answered else _HEAD
    # Order matters: aiohttp's timeouts are TimeoutErrors, its connect timeout a connector one.
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout (--connect-timeout) connecting"
    if isinstance(exc, UpstreamWriteTimeout):
        return "write timeout (--write-timeout) sending the request"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return f"read timeout (--read-timeout) {phase}"
    if isinstance(exc, TimeoutError):
        return f"whole-request limit (--request-timeout) {phase}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connect_cause(exc)
    return f"{type(exc).__name__} {phase}"


def _connect_cause(exc: aiohttp.ClientConnectorError) -> str:
    host = f"[{exc.host}]" if ":" in exc.host else exc.host
    where = f"connect to {host}:{exc.port}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        return f"{where}: TLS certificate rejected ({why})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"{where}: TLS handshake failed"
    os_error = exc.os_error
    if isinstance(os_error, socket.gaierror):
        return f"{where}: host name not resolved"
    if os_error.errno:
        return f"{where}: {os.strerror(os_error.errno).lower()}"
    return f"{where}: connection failed"


def stream_cause(kind: ErrorKind) -> str | None:
    """How an upstream's answer that ended without breaking failed, or None if ``kind`` is
    no such failure."""
    return _STREAM_FAILURES.get(kind)


def status_cause(status: int, message: str | None) -> str:
    """An upstream's 4xx or 5xx, with the message of its error answer when it had one."""
    return f"upstream answered {status}" + (f": {message}" if message else "")


_MAX_ERROR_HEAD = 8192  # an error answer's message is near its start
_MAX_ERROR_MESSAGE = 200


def error_message(body: bytes) -> str | None:
    """The message of an error answer (OpenAI's, vLLM's, Anthropic's or FastAPI's shape),
    shortened, or None; nothing else of the body."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    error = answer.get("error")
    candidates = (
        error.get("message") if isinstance(error, dict) else error,
        answer.get("message"),
        answer.get("detail"),
    )
    message = next((text for text in candidates if isinstance(text, str) and text), None)
    if message is None:
        return None
    # A validation error (pydantic's, as vLLM passes it on) quotes the offending input after
    # "[type=...": the request's own text, which the log never holds.
    message = message.split(" [type=", 1)[0]
    if len(message) <= _MAX_ERROR_MESSAGE:
        return message
    return message[:_MAX_ERROR_MESSAGE] + "..."


class ErrorAnswerReader:
    """A body filter for an upstream's error answer: every byte passes, and the first few
    kilobytes are kept to read its message from."""

    __slots__ = ("_head",)
    stopped = False

    def __init__(self) -> None:
        self._head = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        room = _MAX_ERROR_HEAD - len(self._head)
        if room > 0:
            self._head += chunk[:room]
        return chunk

    def message(self) -> str | None:
        return error_message(bytes(self._head))


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
