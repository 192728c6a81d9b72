"""What reaches the log about clients: no request bytes, no secrets, and not too much of it.

aiohttp and asyncio log a client's bad request with the exception's text and a traceback, and
that text quotes the request: the start of an over-long bearer token, a header with a control
byte, prompt bytes around broken chunk framing. Any client can trigger such a record, so each is
reduced to one line (what happened, the client's address, the error class) and only a few pass
per second. The upstream URL is logged with any credentials in it masked.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from metrics_proxy.setting_rules import mask_url

__all__ = [
    "GUARDED_LOGGERS",
    "LogGuard",
    "RateLimiter",
    "install_log_guard",
    "mask_url",
    "needs_reduction",
    "reduced_message",
]

# Every logger aiohttp logs through (aiohttp/log.py), and asyncio's. A logger's filters see
# only the records logged on that logger itself, not its children's, hence each by name.
GUARDED_LOGGERS = (
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.internal",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.websocket",
    "asyncio",
)

# A message template is kept up to the first of these: past them come formatted values
# (``%s``), object reprs (``<Task ... exception=LineTooLong(b'...')>``), call arguments;
# ``<locals>`` is only part of a function's name (``Exception in callback f.<locals>.g(...)``).
_PHRASE = re.compile(r"(?:<locals>|[^%<(\[{'\"=:\r\n])*")
_MAX_PHRASE = 120
_AIOHTTP_ERROR_FROM = "Error handling request from %s"


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds; counts the ones it turns away."""

    def __init__(
        self, limit: int = 10, window: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._window_start = -float("inf")
        self._admitted = 0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None if this event must be dropped; otherwise how many were dropped since the last
        admitted one (so the next line that passes can say so)."""
        now = self._clock()
        if now - self._window_start >= self._window:
            self._window_start = now
            self._admitted = 0
        if self._admitted >= self._limit:
            self._suppressed += 1
            return None
        self._admitted += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _values(record: logging.LogRecord) -> tuple[object, ...]:
    args = record.args
    if isinstance(args, Mapping):  # logger.info("%(name)s", {"name": ...})
        return tuple(args.values())
    return args or ()


def _exception(record: logging.LogRecord) -> BaseException | None:
    if isinstance(record.msg, BaseException):  # logger.error(exc): the text is the message
        return record.msg
    if record.exc_info and record.exc_info[1] is not None:
        return record.exc_info[1]
    return next((arg for arg in _values(record) if isinstance(arg, BaseException)), None)


def needs_reduction(record: logging.LogRecord) -> bool:
    """Whether a guarded logger's record may carry client bytes: it has an exception (whose
    text may quote the request), bytes among its values, or is a warning or worse (asyncio
    bakes reprs of tasks and callbacks, arguments included, into its messages)."""
    if record.levelno >= logging.WARNING or _exception(record) is not None:
        return True
    if not isinstance(record.msg, str):
        return True
    return any(isinstance(arg, bytes | bytearray | memoryview) for arg in _values(record))


def _phrase(record: logging.LogRecord) -> str:
    found = _PHRASE.match(record.msg) if isinstance(record.msg, str) else None
    phrase = found[0].strip()[:_MAX_PHRASE].removesuffix(" from").strip() if found else ""
    return phrase or "error"


def _frames(traceback: TracebackType | None) -> Iterator[dict[str, object]]:
    while traceback is not None:
        yield traceback.tb_frame.f_locals
        traceback = traceback.tb_next


def _peer(record: logging.LogRecord, exc: BaseException | None) -> str | None:
    """The client's address: aiohttp's own argument, or the request or connection handler the
    exception passed through (the frames hold them; the record does not)."""
    args = _values(record)
    if record.msg == _AIOHTTP_ERROR_FROM and args and args[0] is not None:
        return str(args[0])
    for local in _frames(exc.__traceback__ if exc is not None else None):
        request = local.get("request")
        if isinstance(request, web.BaseRequest) and request.remote:
            return request.remote
        handler = local.get("self")
        if isinstance(handler, RequestHandler) and handler.transport is not None:
            peername = handler.transport.get_extra_info("peername")
            if isinstance(peername, tuple) and peername:
                return str(peername[0])
    return None


def reduced_message(record: logging.LogRecord) -> str:
    """One line: what happened, from which client, which error class; none of the error's text."""
    exc = _exception(record)
    line = _phrase(record)
    peer = _peer(record, exc)
    if peer is not None:
        line += f" from {peer}"
    if exc is not None:
        line += f": {type(exc).__name__}"
    return line


class LogGuard(logging.Filter):
    """Reduces what :func:`needs_reduction` picks to :func:`reduced_message`'s one line and
    rate-limits those lines; passes everything else untouched."""

    def __init__(self, limiter: RateLimiter | None = None) -> None:
        super().__init__()
        self._limiter = limiter or RateLimiter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not needs_reduction(record):
            return True
        suppressed = self._limiter.admit()
        if suppressed is None:
            return False
        message = reduced_message(record)
        if suppressed:
            message += f" ({suppressed} similar records suppressed)"
        # Filters run before any handler formats the record, so every handler gets this.
        record.msg, record.args = message, ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


_GUARD = LogGuard()


def install_log_guard() -> None:
    """Put the process's one guard on every guarded logger (again is harmless)."""
    for name in GUARDED_LOGGERS:
        logging.getLogger(name).addFilter(_GUARD)
