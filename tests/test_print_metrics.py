"""print_metrics: the text view of a real recorder's snapshot, and the command over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.config import Config
from metrics_proxy.print_metrics import _frame, build_parser, format_snapshot, histogram_bar, main
from metrics_proxy.server import create_app
from metrics_proxy.tenant_metrics import TenantMetrics

Client = TestClient[web.Request, web.Application]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def snapshot() -> dict[str, Any]:
    clock = Clock()
    recorder = ProxyMetricsRecorder("m", max_model_len=8192, clock=clock)
    request = recorder.start_request()
    request.slot_acquired()
    clock.now += 0.0123
    request.output()
    request.finish("stop", prompt_tokens=3, generation_tokens=1)
    return recorder.snapshot()


def _row(text: str, key: str) -> str:
    """The value printed on the row whose key is exactly ``key``."""
    match = re.search(rf"^  {re.escape(key)} +(\S+)$", text, re.MULTILINE)
    assert match, f"no row {key!r} in:\n{text}"
    return match.group(1)


def _histogram(text: str, key: str) -> list[str]:
    """The fields of the line under a histogram's name: count, sum, mean, p50, p90, p99, bar…"""
    lines = text.splitlines()
    return lines[lines.index(f"  {key}") + 1].split()


def test_gauges_and_counters_print_one_row_per_label_set(snapshot: dict[str, Any]) -> None:
    text = format_snapshot(snapshot)
    assert text.splitlines()[0] == "all series: model_name=m engine=proxy"
    assert _row(text, "vllm:num_requests_running") == "0"
    assert _row(text, "vllm:num_requests_waiting_by_reason{reason=capacity}") == "0"
    assert _row(text, "vllm:prompt_tokens_total") == "3"
    assert _row(text, "vllm:request_success_total{finished_reason=stop}") == "1"
    assert _row(text, "vllm:request_success_total{finished_reason=length}") == "0"
    assert _row(text, "proxy_errors_total{kind=bad_request}") == "0"
    # The shared labels are in the header only.
    assert "model_name" not in text.split("\n", 1)[1]
    assert max(len(line) for line in text.splitlines()) <= 100


def test_a_histogram_line_has_count_sum_mean_quantiles_and_a_bar(
    snapshot: dict[str, Any],
) -> None:
    text = format_snapshot(snapshot)
    # One prompt of 3 tokens, in the bucket (2, 5]: its quantiles are 3, not PromQL's 3.5.
    assert _histogram(text, "vllm:request_prompt_tokens") == [
        *("1", "3", "3", "3", "3", "3"),
        *("█", "(2,", "5]"),
    ]
    assert _histogram(text, "vllm:request_params_n")[3:6] == ["1", "1", "1"]
    assert _histogram(text, "vllm:request_params_max_tokens") == ["0", "0", *["-"] * 4]
    # Seconds in ms: a TTFT of 12.3 ms, in the bucket (10ms, 20ms], within 1 %.
    ttft = _histogram(text, "vllm:time_to_first_token_seconds")
    assert ttft[:3] == ["1", "12.3ms", "12.3ms"]
    assert ttft[3] == ttft[4] == ttft[5]
    assert float(ttft[3].removesuffix("ms")) == pytest.approx(12.3, rel=0.01)
    assert ttft[6:] == ["█", "(10ms,", "20ms]"]


def test_the_bar_shows_per_bucket_counts_between_the_first_and_last_used_bounds() -> None:
    # Per bucket: 0, 2, 0, 5, then 1 beyond the last finite bound.
    buckets = [[0.01, 0], [0.025, 2], [0.05, 2], [0.1, 7]]
    assert histogram_bar(buckets, 8, seconds=True) == "▄·█▂ (10ms, +Inf)"
    assert histogram_bar([[1.0, 0], [2.0, 3], [5.0, 3]], 3) == "█ (1, 2]"
    assert histogram_bar([[1.0, 0]], 0) == ""


def test_the_filter_keeps_families_whose_name_contains_any_substring(
    snapshot: dict[str, Any],
) -> None:
    text = format_snapshot(snapshot, ["success", "prompt_tokens"])
    names = {line.split()[0].split("{")[0] for line in text.splitlines() if line[:3] == "  v"}
    assert names == {
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:request_prompt_tokens",
    }
    assert "GAUGES" not in text
    assert "no metric family" in format_snapshot(snapshot, ["nothing-like-this"])


# --- the command, against the proxy app served on 127.0.0.1 -----------------------------------


@pytest.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(
        create_app(Config(upstream_url="http://127.0.0.1:9", model_name="m"))
    )


async def _run(*argv: str) -> int:
    # main() blocks on urllib, so it runs in a thread while the loop serves the app.
    return await asyncio.to_thread(main, list(argv))


async def test_the_command_prints_the_proxys_metrics(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    async with client.post("/v1/chat/completions", data=b"{") as response:
        assert response.status == 400
    assert await _run("--url", str(client.make_url("/internal/metrics"))) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert _row(out, "proxy_errors_total{kind=bad_request}") == "1"
    assert _row(out, "vllm:request_success_total{finished_reason=stop}") == "0"


async def test_json_prints_the_raw_snapshot_indented_and_filtered(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    url = str(client.make_url("/internal/metrics"))
    assert await _run("--url", url, "--json", "--filter", "request_success") == 0
    out = capsys.readouterr().out
    assert out.startswith('{\n  "families": [\n')
    families = orjson.loads(out)["families"]
    assert [f["name"] for f in families] == ["vllm:request_success_total"]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def _one_error_line(err: str, expected: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("print_metrics: ")
    assert expected in err


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/metrics", "did not answer JSON"),
        ("/internal/healthz", "not a metrics snapshot"),
        # Forwarded to the proxy's dead upstream: a 502, as good as any HTTP error status.
        ("/internal/metrics/nope", "answered HTTP 502"),
    ],
)
async def test_an_answer_that_is_not_a_snapshot_exits_1(
    client: Client, capsys: pytest.CaptureFixture[str], path: str, expected: str
) -> None:
    assert await _run("--url", str(client.make_url(path))) == 1
    out, err = capsys.readouterr()
    assert out == ""
    _one_error_line(err, expected)


async def test_an_unreachable_or_silent_url_exits_1(
    closed_port: int, silent_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{closed_port}/internal/metrics"
    assert await _run("--url", url) == 1
    _one_error_line(capsys.readouterr().err, f"cannot reach {url}: Connection refused")
    url = f"http://127.0.0.1:{silent_port}/internal/metrics"
    assert await _run("--url", url, "--timeout", "0.2") == 1
    _one_error_line(capsys.readouterr().err, f"no answer from {url} within 0.2 s")


@pytest.mark.parametrize(
    "argv", [["--watch", "0"], ["--timeout", "-1"], ["--url", "ftp://127.0.0.1/x"]]
)
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2


def test_the_module_run_as_a_command_exits_1_without_a_traceback(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/internal/metrics"
    command = [sys.executable, "-m", "metrics_proxy.print_metrics", "--url", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    _one_error_line(done.stderr, "Connection refused")


def test_watch_alone_redraws_every_2_seconds() -> None:
    assert build_parser().parse_args(["--watch"]).watch == 2.0
    assert build_parser().parse_args(["--watch", "--all"]).watch == 2.0
    assert build_parser().parse_args(["--watch", "0.5"]).watch == 0.5


def test_the_console_script_runs_print_metrics(closed_port: int) -> None:
    script = Path(sys.executable).with_name("aiohttp-proxy-metrics")
    assert script.exists(), "not installed: pip install -e '.[dev]' again"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    assert "--watch [SECONDS]" in shown.stdout
    assert "--all" in shown.stdout
    url = f"http://127.0.0.1:{closed_port}/internal/metrics"
    done = subprocess.run([script, "--url", url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    _one_error_line(done.stderr, "Connection refused")


async def _watch_plain(url: str, *flags: str) -> tuple[bytes, bytes]:
    """print_metrics --watch into a pipe, until it has printed two frames, then Ctrl-C."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "metrics_proxy.print_metrics", "--url", url, *flags),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(20):
            while seen.count(b"Ctrl-C quits") < 2:
                chunk = await process.stdout.read(65536)
                assert chunk, "print_metrics --watch exited early"
                seen += chunk
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            rest, err = await process.communicate()
    assert process.returncode == 0
    return seen + rest, err


async def test_watch_all_redraws_the_full_dump_until_ctrl_c_which_exits_0_quietly(
    client: Client,
) -> None:
    out, err = await _watch_plain(
        str(client.make_url("/internal/metrics")), "--watch", "0.05", "--all"
    )
    assert err == b""
    assert out.count(b"vllm:request_success_total{finished_reason=stop}") >= 2
    # Not a terminal: plain text, no escape sequence to clear or move anything.
    assert b"\x1b" not in out


async def test_watch_into_a_pipe_prints_plain_live_frames_one_after_another(
    client: Client,
) -> None:
    out, err = await _watch_plain(str(client.make_url("/internal/metrics")), "--watch", "0.05")
    assert err == b""
    assert b"\x1b" not in out
    # Each frame starts with its title; a blank line ends it.
    frames = re.split(r"^(?=.*Ctrl-C quits$)", out.decode(), flags=re.MULTILINE)[1:]
    assert len(frames) >= 2
    for frame in frames:
        assert frame.endswith("\n\n")
        lines = frame.removesuffix("\n\n").splitlines()
        assert len(lines) <= 23
        assert max(len(line) for line in lines) <= 80
        assert any(line.startswith("REQUESTS") for line in lines)


@pytest.mark.parametrize("flags", [(), ("--watch", "0.05", "--all")])
async def test_a_reader_that_stops_early_ends_it_quietly(
    client: Client, flags: tuple[str, ...]
) -> None:
    """``print_metrics | head -1``: once the reader is gone the command ends without a
    traceback, whether it printed once or was watching."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "metrics_proxy.print_metrics"),
            *("--url", str(client.make_url("/internal/metrics")), *flags),
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    async with asyncio.timeout(20):
        _, err = await process.communicate()
    assert err == b""
    assert process.returncode == 0


# --- Top tenants (attribution) ----------------------------------------------------------------


def _tenant_snapshot(tenants: int) -> dict[str, Any]:
    clock = Clock()
    recorder = ProxyMetricsRecorder("m", clock=clock)
    accounts = TenantMetrics(recorder.registry, "m", "proxy", 100, clock=clock)
    for i in range(tenants):
        for outcome in ("stop", "rejected"):
            request = recorder.start_request()
            request.tenant_series = accounts.account(f"tenant-{i:02}")
            clock.now += 0.5
            if outcome == "rejected":
                request.discard()
                continue
            request.slot_acquired()
            request.finish("stop", prompt_tokens=10 * i, generation_tokens=i)
    return recorder.snapshot()


def test_the_top_tenants_by_tokens() -> None:
    text = format_snapshot(_tenant_snapshot(12))
    lines = text.split("TOP TENANTS by tokens (10 of 12)\n")[1].splitlines()
    assert lines[0].split() == ["tenant", "requests", "rejected", "prompt", "generation", "queue",
                                "avg", "queue", "p90"]  # fmt: skip
    row = lines[1].split()
    assert row[:6] == ["tenant-11", "2", "1", "110", "11", "500ms"]
    assert float(row[6].removesuffix("ms")) == pytest.approx(500, rel=0.01)  # the sketch's
    assert [line.split()[0] for line in lines[1:]] == [f"tenant-{i:02}" for i in range(11, 1, -1)]
    assert max(len(line) for line in text.splitlines()) <= 100
    # Every series is in the counters above it too.
    assert _row(text, "proxy_tenant_prompt_tokens_total{tenant=tenant-00}") == "0"


def test_no_tenant_table_without_tenants_or_filtered_out() -> None:
    assert "TOP TENANTS" not in format_snapshot(_tenant_snapshot(0))  # only "other", unused
    assert "TOP TENANTS" not in format_snapshot(_tenant_snapshot(2), ["vllm:"])
    assert "TOP TENANTS" in format_snapshot(_tenant_snapshot(2), ["proxy_tenant"])


def _two_model_snapshot() -> dict[str, Any]:
    """A --model-name auto recorder: two served models, a request of each, one unlisted."""
    recorder = ProxyMetricsRecorder("auto", clock=Clock(), process_metrics=False)
    recorder.serve_models(["llama", "qwen"])
    for model, tokens in (("llama", 3), ("qwen", 5), ("qwen", 5), ("evil", 1)):
        request = recorder.start_request(model=model)
        request.slot_acquired()
        request.finish("stop", prompt_tokens=tokens, generation_tokens=1)
    return recorder.snapshot()


def test_several_models_print_their_model_name_on_each_row() -> None:
    text = format_snapshot(_two_model_snapshot())
    assert text.startswith("all series: engine=proxy\n")
    assert _row(text, "vllm:prompt_tokens_total{model_name=llama}") == "3"
    assert _row(text, "vllm:prompt_tokens_total{model_name=qwen}") == "10"
    assert _row(text, "vllm:prompt_tokens_total{model_name=other}") == "1"


def test_one_model_is_picked_with_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = _two_model_snapshot()
    monkeypatch.setattr("metrics_proxy.print_metrics.fetch_snapshot", lambda *_: snapshot)
    assert main(["--model", "qwen", "--filter", "prompt_tokens_total"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("all series: model_name=qwen engine=proxy\n")
    assert _row(out, "vllm:prompt_tokens_total") == "10"
    assert "llama" not in out


def test_the_live_views_title_counts_the_models() -> None:
    args = build_parser().parse_args(["--watch", "1"])
    title = _frame(args, _two_model_snapshot(), None, 0.0, "")[0]
    assert "  3 models  every 1s  " in title
    picked = build_parser().parse_args(["--watch", "1", "--model", "qwen"])
    assert "  model qwen  every 1s  " in _frame(picked, _two_model_snapshot(), None, 0.0, "")[0]
