"""The log guard's parts: URL masking, the rate limiter, and one-line records without bytes."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request
from aiohttp.web_protocol import RequestPayloadError

from metrics_proxy.log_safety import (
    GUARDED_LOGGERS,
    LogGuard,
    RateLimiter,
    install_log_guard,
    mask_url,
)

CANARY = "CANARY"


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("http://user:SECRETPW@127.0.0.1:9", "http://user:***@127.0.0.1:9"),
        ("https://user:pw@[::1]:8443/prefix", "https://user:***@[::1]:8443/prefix"),
        ("http://u:p@ss@host", "http://u:***@host"),  # an unquoted "@" in the password
        ("http://user:@host", "http://user:***@host"),
        ("http://sk-token@host:8001", "http://***@host:8001"),  # a lone user name is a token
        ("http://127.0.0.1:8001/v1", "http://127.0.0.1:8001/v1"),
    ],
)
def test_mask_url_hides_credentials_and_keeps_the_rest(url: str, logged: str) -> None:
    assert mask_url(url) == logged


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_admits_a_few_per_window_and_counts_the_rest() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limit=3, window=1.0, clock=clock)
    assert [limiter.admit() for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 0.999
    assert limiter.admit() is None
    clock.now += 0.001
    assert [limiter.admit() for _ in range(4)] == [3, 0, 0, None]
    clock.now += 5
    assert limiter.admit() == 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def guarded(clock: FakeClock) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger with a guard (2 records a second) and all it writes."""
    logger = logging.getLogger("test_log_safety.guarded")
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    guard = LogGuard(RateLimiter(limit=2, window=1.0, clock=clock))
    logger.addHandler(handler)
    logger.addFilter(guard)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, output
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(guard)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a logged exception has one."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_aiohttp_parse_error_becomes_one_line_with_peer_and_class(
    guarded: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, output = guarded
    exc = raised(LineTooLong(b"Authorization: Bearer CANARY" + b"t" * 80 + b"...", 8190))
    # What aiohttp's RequestHandler.handle_error logs.
    logger.exception("Error handling request from %s", "203.0.113.9", exc_info=exc)
    assert output.getvalue() == "ERROR Error handling request from 203.0.113.9: LineTooLong\n"


def test_the_peer_is_found_in_the_frames_the_error_passed(
    guarded: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, output = guarded

    def read_body(request: Request) -> None:
        raise RequestPayloadError("CANARY-prompt-2")

    def start(request: Request) -> None:  # aiohttp's start(): the request is one of its locals
        try:
            read_body(request)
        except RequestPayloadError as exc:
            logger.exception("Unhandled exception", exc_info=exc)

    start(make_mocked_request("POST", "/v1/chat/completions").clone(remote="198.51.100.7"))
    assert output.getvalue() == "ERROR Unhandled exception from 198.51.100.7: RequestPayloadError\n"


def test_debug_records_with_exceptions_or_bytes_are_reduced_too(
    guarded: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, output = guarded
    exc = raised(BadHttpMethod("CANARY{method} / HTTP/1.1"))
    logger.debug("Error handling request from %s", "203.0.113.9", exc_info=exc)
    logger.debug("got %r", b"CANARY-bytes")
    assert output.getvalue() == (
        "DEBUG Error handling request from 203.0.113.9: BadHttpMethod\nDEBUG got\n"
    )


def test_exceptions_as_messages_or_arguments_and_stacks_are_withheld(
    guarded: tuple[logging.Logger, io.StringIO], clock: FakeClock
) -> None:
    logger, output = guarded
    logger.error(BadHttpMessage(f"Invalid header value char: b'Bearer {CANARY}\\x01'"))
    logger.debug("Error while closing connector: %r", ValueError(CANARY))
    clock.now += 1
    logger.warning("Multiple access to StreamReader in eof state", stack_info=True)
    assert output.getvalue() == (
        "ERROR error: BadHttpMessage\n"
        "DEBUG Error while closing connector: ValueError\n"
        "WARNING Multiple access to StreamReader in eof state\n"
    )


def test_plain_debug_records_pass_untouched(guarded: tuple[logging.Logger, io.StringIO]) -> None:
    logger, output = guarded
    for _ in range(3):  # over the limit of 2: untouched records are not rate-limited
        logger.debug("Using selector: %s", "EpollSelector")
    assert output.getvalue() == "DEBUG Using selector: EpollSelector\n" * 3


def test_reduced_records_are_rate_limited_and_the_next_line_counts_the_dropped(
    guarded: tuple[logging.Logger, io.StringIO], clock: FakeClock
) -> None:
    logger, output = guarded
    exc = raised(LineTooLong(b"CANARY", 8190))
    for _ in range(5):
        logger.exception("Error handling request from %s", "203.0.113.9", exc_info=exc)
    clock.now += 1
    logger.exception("Error handling request from %s", "203.0.113.9", exc_info=exc)
    line = "ERROR Error handling request from 203.0.113.9: LineTooLong"
    assert output.getvalue().splitlines() == [
        line,
        line,
        line + " (3 similar records suppressed)",
    ]


@pytest.fixture
def asyncio_guarded(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """asyncio's logger with a guard on it, and what reaches the handlers."""
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("asyncio")
    guard = LogGuard()
    logger.addFilter(guard)
    try:
        yield caplog
    finally:
        logger.removeFilter(guard)


async def test_asyncio_task_exception_never_retrieved_is_one_line(
    asyncio_guarded: pytest.LogCaptureFixture,
) -> None:
    async def fail() -> None:
        raise BadHttpMessage(f"Invalid header value char: b'Bearer {CANARY}\\x01'")

    task = asyncio.ensure_future(fail())
    await asyncio.wait([task])
    del task
    gc.collect()  # the task's finalizer reports the exception nobody retrieved
    (record,) = [r for r in asyncio_guarded.records if r.name == "asyncio"]
    assert record.getMessage() == "Task exception was never retrieved: BadHttpMessage"
    assert CANARY not in asyncio_guarded.text


async def test_asyncio_exception_in_callback_is_one_line(
    asyncio_guarded: pytest.LogCaptureFixture,
) -> None:
    def explode(data: bytes) -> None:
        raise ValueError(data)

    asyncio.get_running_loop().call_soon(explode, b"CANARY-prompt")
    await asyncio.sleep(0)  # the callback was queued first, so it has run by now
    (record,) = [r for r in asyncio_guarded.records if r.name == "asyncio"]
    assert record.getMessage() == "Exception in callback " + explode.__qualname__ + ": ValueError"
    assert CANARY not in asyncio_guarded.text


def test_install_puts_one_guard_on_every_guarded_logger() -> None:
    loggers = [logging.getLogger(name) for name in GUARDED_LOGGERS]
    before = [list(logger.filters) for logger in loggers]
    try:
        install_log_guard()
        install_log_guard()
        for logger, filters in zip(loggers, before, strict=True):
            added = [f for f in logger.filters if f not in filters]
            assert len(added) == 1
            assert isinstance(added[0], LogGuard)
    finally:
        for logger, filters in zip(loggers, before, strict=True):
            logger.filters[:] = filters
