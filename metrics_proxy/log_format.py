"""How the log is written: one line per record, as text or as one JSON object, and cheaply.

What the proxy says about a request is a :class:`Line`: a message and named fields. As text
it reads ``POST /v1/chat/completions status=200 ttft_ms=35.1``; as JSON the same fields are
keys of the object. Any other record (aiohttp's and asyncio's, once log_safety.py has reduced
them, the start-up lines) is its message. One summary line is written per request, so the
formatters do little, and under the event loop a burst of lines is written with one system call
at the end of the loop's turn rather than one each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import TextIO

import orjson

from metrics_proxy.config import LogFormat

__all__ = [
    "JsonFormatter",
    "Line",
    "LogWriter",
    "TextFormatter",
    "configure_logging",
    "text_value",
    "write",
    "write_later",
]

# A text value goes as it is when nothing in it could end the field or the line (visible
# ASCII, no quote or backslash); anything else is quoted with JSON's escapes, in ASCII.
_BARE = re.compile(r"[!#-\[\]-~]+")


def text_value(value: object) -> str:
    """A field's value as a text line shows it: ``-`` for none, numbers as they print."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value)
    return str(value)


class Line:
    """A line about a request: ``message`` (its own words quoted where need be by the
    caller), then ``fields``; ``context`` holds what the message already says (the method and
    path, say), which JSON gives keys of their own."""

    __slots__ = ("context", "fields", "message")

    def __init__(
        self,
        message: str,
        fields: dict[str, object],
        context: dict[str, object] | None = None,
    ) -> None:
        self.message = message
        self.fields = fields
        self.context = context

    def __str__(self) -> str:
        return self.message + "".join(
            [f" {key}={text_value(value)}" for key, value in self.fields.items()]
        )

    def as_dict(self) -> dict[str, object]:
        entry: dict[str, object] = {"message": self.message}
        if self.context:
            entry.update(self.context)
        entry.update(self.fields)
        return entry


class _SecondCache:
    """The part of a timestamp that changes once a second, made once a second."""

    __slots__ = ("_convert", "_pattern", "_second", "_text")

    def __init__(self, pattern: str, *, local: bool) -> None:
        self._pattern = pattern
        self._convert = time.localtime if local else time.gmtime
        self._second = -1
        self._text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = time.strftime(self._pattern, self._convert(second))
        return self._text


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """What logging.Formatter adds below a message: the exception and stack, if any."""
    text = ""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        text = record.exc_text
    if record.stack_info:
        text += ("\n" if text else "") + formatter.formatStack(record.stack_info)
    return text


class TextFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 INFO metrics_proxy: message``: logging.basicConfig's layout
    with ``%(asctime)s %(levelname)s %(name)s: %(message)s``, in local time."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%d %H:%M:%S", local=True)

    def line(self, created: float, level: str, name: str, message: object) -> str:
        millis = int(created % 1 * 1000)
        return f"{self._seconds(created)},{millis:03d} {level} {name}: {message}"

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(record.created, record.levelname, record.name, record.getMessage())
        if record.exc_info or record.exc_text or record.stack_info:
            text += "\n" + _traceback(self, record)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, a :class:`Line`'s fields as keys of their own, and ``traceback``
    when a record has one."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S", local=False)

    def _entry(self, created: float, level: str, name: str, message: object) -> dict[str, object]:
        millis = int(created % 1 * 1000)
        entry: dict[str, object] = {
            "time": f"{self._seconds(created)}.{millis:03d}Z",
            "level": level,
            "logger": name,
        }
        if type(message) is Line:
            entry.update(message.as_dict())
        else:
            entry["message"] = message
        return entry

    def line(self, created: float, level: str, name: str, message: object) -> str:
        return _dumps(self._entry(created, level, name, message))

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg
        message = msg if type(msg) is Line and not record.args else record.getMessage()
        entry = self._entry(record.created, record.levelname, record.name, message)
        if record.exc_info or record.exc_text or record.stack_info:
            entry["traceback"] = _traceback(self, record)
        return _dumps(entry)


def _dumps(entry: dict[str, object]) -> str:
    try:
        return orjson.dumps(entry, default=str).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, say: the slower encoder takes it
        return json.dumps(entry, default=str, separators=(",", ":"))


# A line to be made when it is written: its time, level, logger name, and its maker.
_Later = tuple[float, int, str, Callable[[], Line]]


class LogWriter(logging.StreamHandler[TextIO]):
    """Writes each record on a line of its own. Inside a running event loop, INFO lines wait
    for the end of the loop's turn and go out together, in order: one system call for a burst
    of lines, none held longer than the turn. A request's line may even be made there
    (:meth:`write_later`), with the turn's others, so that the request's own path pays one
    append. A warning or worse, and anything written outside the loop, goes out at once,
    after what waits."""

    def __init__(self, stream: TextIO, formatter: TextFormatter | JsonFormatter) -> None:
        super().__init__(stream)
        self.setFormatter(formatter)
        self._lines = formatter
        self._waiting: list[str | _Later] = []
        self._turn_end: asyncio.AbstractEventLoop | None = None  # whose turn end writes them

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._add(self.format(record), record.levelno)
        except Exception:
            self.handleError(record)

    def write_line(self, level: int, name: str, line: Line) -> None:
        """``line`` as a record of it would be written, without making the record."""
        text = self._lines.line(time.time(), logging.getLevelName(level), name, line)
        self.acquire()
        try:
            self._add(text, level)
        finally:
            self.release()

    def write_later(self, level: int, name: str, make: Callable[[], Line]) -> None:
        """The line ``make`` returns, made when it is written (stamped now): what ``make``
        reads must not change until the end of the loop's turn."""
        self.acquire()
        try:
            self._add((time.time(), level, name, make), level)
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            waiting, self._waiting = self._waiting, []
            if waiting:
                self.stream.write("".join([self._text(item) + "\n" for item in waiting]))
            super().flush()
        finally:
            self.release()

    def _add(self, item: str | _Later, level: int) -> None:
        self._waiting.append(item)
        if level >= logging.WARNING:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._turn_end is not loop:
            self._turn_end = loop
            loop.call_soon(self._at_turn_end)

    def _at_turn_end(self) -> None:
        self._turn_end = None
        self.flush()

    def _text(self, item: str | _Later) -> str:
        if isinstance(item, str):
            return item
        created, level, name, make = item
        try:
            message: object = make()
            level_name = logging.getLevelName(level)
        except Exception as exc:  # a bug in a line's maker must not take the others along
            message, level_name = f"a log line could not be made: {type(exc).__name__}", "ERROR"
        return self._lines.line(created, level_name, name, message)


# The command's LogWriter, once configure_logging has made it the one place records go.
_direct: LogWriter | None = None


def write(logger: logging.Logger, level: int, line: Line) -> None:
    """Write ``line`` at ``level`` (the caller has checked that the logger takes it). In the
    command it goes straight to its LogWriter, without the logging record that would first
    go through the logger, its filters and handlers; anywhere else (embedded, under test) it
    is a record like any other."""
    writer = _direct
    if writer is None:
        logger.log(level, line)
    else:
        writer.write_line(level, logger.name, line)


def write_later(logger: logging.Logger, level: int, make: Callable[[], Line]) -> None:
    """:func:`write` for the line ``make`` returns. In the command it is made at the end of
    the event loop's turn, with the turn's other lines, which costs the caller one append
    (what ``make`` reads must not change until then); anywhere else, now."""
    writer = _direct
    if writer is None:
        logger.log(level, make())
    else:
        writer.write_later(level, logger.name, make)


def stderr_stream() -> TextIO:
    """Standard error, without the flush after every line that Python gives it (LogWriter
    flushes); standard error itself where it is no file (a test's capture, say)."""
    try:
        fileno = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr
    return open(  # it lives as long as the process
        fileno, "w", encoding="utf-8", errors="backslashreplace", closefd=False
    )


def configure_logging(level: str, log_format: LogFormat) -> None:
    """The command's logging: every record (the proxy's, aiohttp's, asyncio's, Python's
    warnings) through one LogWriter on standard error, as text or JSON."""
    # Fields that no line shows, each costing a call per record (logging's documented
    # optimizations): the caller's frame, thread, process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _direct
    formatter = JsonFormatter() if log_format == "json" else TextFormatter()
    _direct = LogWriter(stderr_stream(), formatter)
    logging.basicConfig(level=level, handlers=[_direct], force=True)
    logging.captureWarnings(True)
