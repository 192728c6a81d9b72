"""How the log is written: text or one JSON object per line, the same fields either way,
every duration with its unit, and no value that could break a line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from functools import partial

import aiohttp
import orjson
import pytest

from metrics_proxy.log_format import JsonFormatter, Line, LogWriter, TextFormatter
from tests.support.command import ProxyCommand

SUMMARY = Line(
    "POST /v1/chat/completions",
    {"status": 200, "finished_reason": "stop", "ttft_ms": 35.1, "prompt_tokens": None},
    {"method": "POST", "path": "/v1/chat/completions"},
)
TEXT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def test_a_line_shows_its_fields_as_key_value_pairs() -> None:
    assert str(SUMMARY) == (
        "POST /v1/chat/completions status=200 finished_reason=stop ttft_ms=35.1 prompt_tokens=-"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("stop", "stop"),
        ("a=b/c:d", "a=b/c:d"),
        ("two words", '"two words"'),
        ("line\nbreak", '"line\\nbreak"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("caf\u00e9\u2028", '"caf\\u00e9\\u2028"'),
        ("", '""'),
    ],
)
def test_a_value_that_could_break_the_line_is_quoted(value: str, shown: str) -> None:
    line = str(Line("GET /x", {"finished_reason": value}))
    assert line == f"GET /x finished_reason={shown}"
    assert len(line.splitlines()) == 1


def _writer(formatter: TextFormatter | JsonFormatter) -> tuple[LogWriter, io.StringIO]:
    out = io.StringIO()
    return LogWriter(out, formatter), out


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_line_written_straight_reads_as_its_record_would(
    formatter: type[TextFormatter | JsonFormatter],
) -> None:
    writer, out = _writer(formatter())
    record = logging.LogRecord("metrics_proxy", logging.INFO, "", 0, SUMMARY, (), None)
    writer.handle(record)
    writer.write_line(logging.INFO, "metrics_proxy", SUMMARY)
    as_record, straight = out.getvalue().splitlines()
    if formatter is JsonFormatter:
        as_record, straight = (orjson.loads(text) | {"time": "t"} for text in (as_record, straight))
    else:
        as_record, straight = (TEXT_TIME.sub("", text) for text in (as_record, straight))
    assert as_record == straight


def test_json_gives_a_line_its_fields_and_context_as_keys() -> None:
    writer, out = _writer(JsonFormatter())
    writer.write_line(logging.WARNING, "metrics_proxy", SUMMARY)
    entry = orjson.loads(out.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("time"))
    assert entry == {
        "level": "WARNING",
        "logger": "metrics_proxy",
        "message": "POST /v1/chat/completions",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "finished_reason": "stop",
        "ttft_ms": 35.1,
        "prompt_tokens": None,
    }


def test_json_keeps_a_traceback_inside_its_one_line() -> None:
    writer, out = _writer(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 0, "failed %s", ("here",), None)
        record.exc_info = sys.exc_info()
    writer.handle(record)
    (line,) = out.getvalue().splitlines()
    entry = orjson.loads(line)
    assert entry["message"] == "failed here"
    assert "ValueError: boom" in entry["traceback"]


def test_json_takes_integers_past_64_bits() -> None:
    writer, out = _writer(JsonFormatter())
    writer.write_line(logging.INFO, "m", Line("x", {"prompt_tokens": 2**70}))
    assert json.loads(out.getvalue())["prompt_tokens"] == 2**70


async def _one_request_and_one_bad_one(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        body = b'{"messages": [{"role": "user", "content": "a secret prompt"}]}'
        async with session.post(url + "/v1/chat/completions", data=body) as response:
            assert response.status == 200
            await response.read()
        # An over-long header: aiohttp's record of it, as log_safety.py reduces it.
        async with session.get(url + "/v1/models", headers={"X-Long": "y" * 9000}) as response:
            assert response.status == 400


async def test_json_is_one_object_per_line_for_every_record(fake_upstream_url: str) -> None:
    proxy = await ProxyCommand.start(
        "--upstream-url", fake_upstream_url, "--model-name", "fake-model", "--log-level", "debug",
        env={"PROXY_LOG_FORMAT": "json"},
    )  # fmt: skip
    try:
        await _one_request_and_one_bad_one(await proxy.serving())
    finally:
        stderr = await proxy.stop()
    entries = [orjson.loads(line) for line in stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    (summary,) = [e for e in entries if e["message"] == "POST /v1/chat/completions"]
    assert summary["status"] == 200
    assert summary["prompt_tokens"] == 7
    assert {"queue_ms", "inference_ms", "ttft_ms", "e2e_ms"} <= summary.keys()
    assert any(e["logger"] == "aiohttp.server" for e in entries)
    assert b"secret prompt" not in stderr


async def test_every_duration_in_a_text_line_says_its_unit(fake_upstream_url: str) -> None:
    proxy = await ProxyCommand.start("--upstream-url", fake_upstream_url, "--model-name", "m")
    try:
        await _one_request_and_one_bad_one(await proxy.serving())
    finally:
        stderr = await proxy.stop()
    (summary,) = [line for line in stderr.decode().splitlines() if "POST /v1/chat" in line]
    keys = re.findall(r" (\w+)=", summary)
    assert {"queue_ms", "inference_ms", "ttft_ms", "e2e_ms"} <= set(keys)
    # No timing left without a unit (the old line said queue=, ttft=, e2e= in seconds).
    assert not {"queue", "inference", "ttft", "e2e"} & set(keys)


def _messages(out: io.StringIO) -> list[str]:
    return [TEXT_TIME.sub("", line) for line in out.getvalue().splitlines()]


async def test_lines_wait_for_the_end_of_the_loop_s_turn_and_keep_their_order() -> None:
    writer, out = _writer(TextFormatter())
    made: list[int] = []

    def make(number: int) -> Line:
        made.append(number)
        return Line(f"line {number}", {})

    writer.write_later(logging.INFO, "m", partial(make, 1))
    writer.handle(logging.LogRecord("r", logging.INFO, "", 0, "record %d", (2,), None))
    writer.write_later(logging.INFO, "m", partial(make, 3))
    assert (out.getvalue(), made) == ("", [])  # neither made nor written yet
    await asyncio.sleep(0)  # the turn ends
    assert made == [1, 3]
    assert _messages(out) == ["INFO m: line 1", "INFO r: record 2", "INFO m: line 3"]


async def test_a_warning_is_written_at_once_after_what_waits() -> None:
    writer, out = _writer(TextFormatter())
    writer.write_later(logging.INFO, "m", lambda: Line("waiting", {}))
    writer.write_line(logging.WARNING, "m", Line("now", {}))
    assert _messages(out) == ["INFO m: waiting", "WARNING m: now"]


def test_outside_the_event_loop_a_line_is_written_at_once() -> None:
    writer, out = _writer(TextFormatter())
    writer.write_later(logging.INFO, "m", lambda: Line("at once", {}))
    assert _messages(out) == ["INFO m: at once"]


async def test_a_line_that_cannot_be_made_leaves_the_others_written() -> None:
    writer, out = _writer(TextFormatter())

    def broken() -> Line:
        raise ZeroDivisionError

    writer.write_later(logging.INFO, "m", broken)
    writer.write_later(logging.INFO, "m", lambda: Line("fine", {}))
    await asyncio.sleep(0)
    assert _messages(out) == [
        "ERROR m: a log line could not be made: ZeroDivisionError",
        "INFO m: fine",
    ]
