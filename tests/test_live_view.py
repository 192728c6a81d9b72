"""print_metrics --watch, the live view: the frame an operator reads first, its rates over the
interval, and the command in an 80x24 terminal (a pty read by a terminal emulator, pyte)
against a real proxy: every frame fits, redraws never scroll, the terminal is given back."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import sys
import termios
from collections.abc import Callable, Iterator

import orjson
import pyte
import pytest

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.live_view import HEIGHT, LATENCIES, WIDTH, live_frame, short
from metrics_proxy.print_metrics import ENTER_SCREEN, ERASE_BELOW, ERASE_LINE, HOME, LEAVE_SCREEN
from metrics_proxy.tenant_metrics import TenantMetrics
from tests.support.fake_upstream import BEHAVIOR_HEADER
from tests.support.stack import Stack

TITLE = "127.0.0.1:8000  model m  every 2s  12:00:00  Ctrl-C quits"
LATENCY_LABELS = {label for label, _ in LATENCIES}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _recorder() -> tuple[ProxyMetricsRecorder, Clock]:
    clock = Clock()
    return ProxyMetricsRecorder("m", process_metrics=False, clock=clock), clock


def _serve(recorder: ProxyMetricsRecorder, clock: Clock, reason: str, ttft: float) -> None:
    request = recorder.start_request()
    request.slot_acquired()
    clock.now += ttft
    request.output()
    clock.now += 0.01
    request.output()
    request.finish(reason, prompt_tokens=100, generation_tokens=2)


RIGHT_BLOCK = 43  # the column where tokens and gauges, then disconnects, start


def _cells(frame: list[str], label: str) -> list[str]:
    """The cells of the first row labelled ``label``: in the left or right block of the
    two-block sections, or across a latency row."""
    for line in frame:
        if line.startswith(f"  {label} ") and line.split()[0] in LATENCY_LABELS:
            return line.split()[1:]
        for block in (line[:RIGHT_BLOCK], line[RIGHT_BLOCK:]):
            if block.split()[:1] == [label]:
                return block.split()[1:]
    raise AssertionError(f"no row {label!r} in:\n" + "\n".join(frame))


def test_rates_are_the_counters_deltas_over_the_interval() -> None:
    recorder, clock = _recorder()
    _serve(recorder, clock, "stop", 0.02)
    before = recorder.snapshot()
    for _ in range(4):
        _serve(recorder, clock, "stop", 0.02)
    _serve(recorder, clock, "length", 0.02)
    recorder.count_error("timeout")
    recorder.count_disconnect("streaming")
    recorder.count_admission_rejection("max_queue_wait")
    frame = live_frame(recorder.snapshot(), before, 2.0, TITLE)
    assert frame[0] == TITLE
    assert _cells(frame, "stop") == ["2", "5"]  # 4 in 2 s, 5 in all
    assert _cells(frame, "length") == ["0.5", "1"]
    assert _cells(frame, "abort") == ["0", "0"]
    assert _cells(frame, "rejected") == ["0.5", "1"]
    assert _cells(frame, "all") == ["3", "7"]
    assert _cells(frame, "prompt") == ["250", "600"]
    assert _cells(frame, "generation") == ["5", "12"]
    assert _cells(frame, "timeout") == ["0.5", "1"]
    assert _cells(frame, "streaming") == ["0.5", "1"]
    assert _cells(frame, "running") == _cells(frame, "waiting") == ["0"]  # in flight
    assert "repetition" not in "\n".join(frame)  # shown once it happens


def test_the_first_frame_has_totals_but_no_rates_yet() -> None:
    recorder, clock = _recorder()
    _serve(recorder, clock, "stop", 0.02)
    frame = live_frame(recorder.snapshot(), None, 0.0, TITLE, "(rates from the next frame on)")
    assert frame[1] == "(rates from the next frame on)"
    assert _cells(frame, "stop") == ["-", "1"]
    assert _cells(frame, "none") == []  # no error yet


def test_a_counter_that_went_back_counts_from_zero() -> None:
    recorder, clock = _recorder()
    for _ in range(10):
        _serve(recorder, clock, "stop", 0.02)
    before = recorder.snapshot()
    restarted, clock = _recorder()
    _serve(restarted, clock, "stop", 0.02)
    assert _cells(live_frame(restarted.snapshot(), before, 1.0, TITLE), "stop") == ["1", "1"]


def test_latency_quantiles_come_from_the_last_minute() -> None:
    recorder, clock = _recorder()
    for _ in range(50):
        _serve(recorder, clock, "stop", 2.0)  # a slow start...
    clock.now += 120.0
    for ttft in (0.01, 0.02, 0.03):
        _serve(recorder, clock, "stop", ttft)  # ... then three fast ones in the last minute
    frame = live_frame(recorder.snapshot(), None, 0.0, TITLE)
    assert any(line.startswith("LATENCY, last 60 s") for line in frame)
    p50, p90, p99, count = _cells(frame, "TTFT")
    assert (p50[-2:], p90[-2:], p99[-2:], count) == ("ms", "ms", "ms", "3")
    assert float(p50[:-2]) == pytest.approx(20.0, rel=0.01)
    assert float(p99[:-2]) == pytest.approx(30.0, rel=0.01)
    assert _cells(frame, "ITL")[3] == "3"
    assert _cells(frame, "e2e")[0].endswith("ms")


def test_the_frame_fits_80x24_however_big_the_numbers_and_many_the_errors() -> None:
    recorder, _ = _recorder()
    before = recorder.snapshot()
    for kind in ("bad_request", "body_too_large", "connect", "timeout", "upstream_status"):
        recorder.count_error(kind)
    recorder.count_error("upstream_event_too_large")
    recorder.count_error("client_timeout")
    request = recorder.start_request()
    request.slot_acquired()
    request.finish("stop", prompt_tokens=1_234_567_890, generation_tokens=3)
    frame = live_frame(recorder.snapshot(), before, 0.001, "t" * 200, "s" * 200)
    assert len(frame) <= HEIGHT - 1
    assert max(len(line) for line in frame) <= WIDTH
    text = "\n".join(frame)
    assert "(3 more)" in text  # 7 kinds: four rows, then the rest summed
    assert _cells(frame, "prompt") == ["1.23T", "1.23G"]


@pytest.mark.parametrize(
    ("total", "shown"),
    [(999_999, "999999"), (999_999.7, "1M"), (1_234_567, "1.23M"), (999_600_000, "1G")],
)
def test_big_totals_stay_short_and_never_turn_into_exponents(total: int, shown: str) -> None:
    recorder, _ = _recorder()
    recorder.start_request().finish("stop", prompt_tokens=total, generation_tokens=0)
    assert _cells(live_frame(recorder.snapshot(), None, 0.0, TITLE), "prompt") == ["-", shown]
    assert (short(999.4), short(999.7), short(0.000123)) == ("999", "1000", "0.000123")


def test_an_older_proxy_without_recent_quantiles_shows_dashes() -> None:
    recorder, clock = _recorder()
    _serve(recorder, clock, "stop", 0.02)
    snapshot = recorder.snapshot()
    for family in snapshot["families"]:
        for sample in family["samples"]:
            sample.pop("recent", None)
    assert _cells(live_frame(snapshot, None, 0.0, TITLE), "TTFT") == ["-", "-", "-", "-"]


# --- the command in a terminal, against a real proxy ------------------------------------------


class Terminal(pyte.Screen):
    """An 80x24 VT100 screen that counts the times its content scrolled up."""

    def __init__(self) -> None:
        super().__init__(WIDTH, HEIGHT)
        self.scrolls = 0

    def index(self) -> None:
        bottom = self.margins.bottom if self.margins else self.lines - 1
        if self.cursor.y == bottom:
            self.scrolls += 1
        super().index()


class PtyReader:
    """Everything the command writes to its terminal, fed to the emulator as it arrives."""

    def __init__(self, fd: int, terminal: Terminal) -> None:
        self.fd = fd
        self.raw = bytearray()
        self.closed = False
        self._stream = pyte.ByteStream(terminal)
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the command closed its side
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.fd)
            self.closed = True
        self.raw += chunk
        self._stream.feed(chunk)
        self._changed.set()

    async def until(self, done: Callable[[], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if done():
                    return
                assert not self.closed, "the command closed its terminal early"
                await self._changed.wait()


class Pty:
    """A pseudo-terminal of 80x24: the command writes to ``side``, the test reads ``main``.
    Each end is closed once: a number closed twice may by then be another socket's."""

    def __init__(self) -> None:
        self.main, self.side = os.openpty()
        fcntl.ioctl(self.side, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))

    def close_side(self) -> None:
        """Once the command has its copy: its exit then ends the reads (EIO)."""
        if self.side >= 0:
            os.close(self.side)
            self.side = -1

    def close(self) -> None:
        self.close_side()
        if self.main >= 0:
            os.close(self.main)
            self.main = -1


@pytest.fixture
def pty_80x24() -> Iterator[Pty]:
    pty = Pty()
    yield pty
    pty.close()


def _frames(raw: bytes) -> list[list[str]]:
    """Each frame as drawn: from the cursor going home to the erasing of what is below."""
    text = raw.decode()
    drawn = [part.split(ERASE_BELOW)[0] for part in text.split(HOME)[1:]]
    return [frame.replace(ERASE_LINE, "").split("\r\n") for frame in drawn]


def _row(terminal: Terminal, label: str) -> list[str]:
    return _cells([line.rstrip() for line in terminal.display], label)


async def _traffic(stack: Stack) -> None:
    slow = orjson.dumps({"ttft": 0.02, "itl": 0.005}).decode()
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    stream = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    for _ in range(3):
        response = await stack.client.post(
            "/v1/chat/completions", data=stream, headers={BEHAVIOR_HEADER: slow}
        )
        assert response.status == 200
        await response.read()
    response = await stack.client.post("/v1/chat/completions", data=b"{")
    assert response.status == 400
    response = await stack.client.post(
        "/v1/chat/completions", data=body, headers={BEHAVIOR_HEADER: '{"status": 500}'}
    )
    assert response.status == 500


async def test_watch_in_an_80x24_terminal_redraws_in_place_and_gives_the_terminal_back(
    stack: Stack, pty_80x24: Pty
) -> None:
    url = str(stack.client.make_url("/internal/metrics"))
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "metrics_proxy.print_metrics", "--url", url, "--watch", "0.1"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=pty_80x24.side,
        stderr=asyncio.subprocess.PIPE,
    )
    pty_80x24.close_side()
    terminal = Terminal()
    reader = PtyReader(pty_80x24.main, terminal)
    try:
        await reader.until(lambda: _drawn(reader))
        assert _row(terminal, "stop") == ["-", "0"]  # the first frame: no interval yet
        await _traffic(stack)
        await reader.until(lambda: _drawn(reader) and _row(terminal, "stop")[1] == "3")
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, err = await process.communicate()
            await reader.until(lambda: reader.closed)
    assert process.returncode == 0
    assert err == b""
    _check_screen(terminal, bytes(reader.raw))


def _drawn(reader: PtyReader) -> bool:
    """The last frame is on screen whole (a frame may reach the pty in several reads)."""
    return reader.raw.endswith(ERASE_BELOW.encode())


def _check_screen(terminal: Terminal, raw: bytes) -> None:
    assert _row(terminal, "error")[1] == "1"  # the upstream's 500
    assert _row(terminal, "bad_request")[1] == "1"
    p50 = _row(terminal, "TTFT")[0]
    assert p50.endswith("ms")
    assert float(p50[:-2]) >= 19.0  # the fake waits 20 ms; the sketch is within 1 %
    # However many frames were drawn, nothing ever scrolled and every frame fits 80x24.
    assert terminal.scrolls == 0
    frames = _frames(raw)
    assert len(frames) >= 3
    for frame in frames:
        assert len(frame) <= HEIGHT
        assert max(len(line) for line in frame) <= WIDTH
    # The alternate screen, entered first, left last; the cursor shown again.
    assert raw.startswith(ENTER_SCREEN.encode())
    assert raw.endswith(LEAVE_SCREEN.encode())
    assert not terminal.cursor.hidden


# --- Tenants (attribution) -------------------------------------------------------------------


def _tenant_recorder() -> tuple[ProxyMetricsRecorder, TenantMetrics, Clock]:
    recorder, clock = _recorder()
    return recorder, TenantMetrics(recorder.registry, "m", "proxy", 100, clock=clock), clock


def _send(recorder: ProxyMetricsRecorder, tenants: TenantMetrics, clock: Clock, tenant: str,
          tokens: int, queue: float = 0.0) -> None:  # fmt: skip
    request = recorder.start_request()
    request.tenant_series = tenants.account(tenant)
    clock.now += queue
    request.slot_acquired()
    request.finish("stop", prompt_tokens=tokens, generation_tokens=tokens)


def _tenant_lines(frame: list[str]) -> list[list[str]]:
    start = next(i for i, line in enumerate(frame) if line.startswith("TENANTS"))
    return [line.split() for line in frame[start:]]


def test_the_busiest_tenants_by_tokens_per_second_and_their_wait() -> None:
    recorder, tenants, clock = _tenant_recorder()
    _send(recorder, tenants, clock, "heavy-yesterday", 10_000)
    _send(recorder, tenants, clock, "busy-now", 10)
    before = recorder.snapshot()
    for _ in range(4):
        _send(recorder, tenants, clock, "busy-now", 500, queue=0.25)
    frame = live_frame(recorder.snapshot(), before, 2.0, TITLE)
    lines = _tenant_lines(frame)
    assert lines[0][:2] == ["TENANTS", "(2)"]
    assert lines[0][2:] == ["tok/s", "req/s", "tokens", "queue"]
    assert lines[1] == ["busy-now", "2000", "2", "4020", "250ms"]  # 4000 tokens in 2 s
    assert lines[2] == ["heavy-yesterday", "0", "0", "20000", "-"]  # no wait in the interval


def test_no_tenant_block_without_attribution() -> None:
    recorder, clock = _recorder()
    _serve(recorder, clock, "stop", 0.02)
    assert not any(
        line.startswith("TENANTS") for line in live_frame(recorder.snapshot(), None, 0, TITLE)
    )


def test_with_every_block_full_the_busiest_tenant_still_shows() -> None:
    recorder, tenants, clock = _tenant_recorder()
    for kind in ("bad_request", "body_too_large", "connect", "timeout", "client_timeout"):
        recorder.count_error(kind)
    for reason in ("repetition", "abort", "error", "length"):
        recorder.start_request().finish(reason)
    for i in range(300):
        _send(recorder, tenants, clock, f"tenant-{i}-" + "x" * 40, 1 + i)
    frame = live_frame(recorder.snapshot(), None, 0.0, "t" * 200, "s" * 200)
    assert len(frame) <= HEIGHT - 1
    assert max(len(line) for line in frame) <= WIDTH
    lines = _tenant_lines(frame)
    assert lines[0][:2] == ["TENANTS", "(101)"]  # --tenant-limit's 100, the rest as "other"
    assert lines[1][0] == "other"  # 200 folded tenants' tokens


def test_with_several_models_counters_sum_and_latency_is_the_busiest_models() -> None:
    clock = Clock()
    recorder = ProxyMetricsRecorder("auto", process_metrics=False, clock=clock)
    recorder.serve_models(["llama", "qwen"])
    for model, ttft in (("llama", 0.5), ("qwen", 0.02), ("qwen", 0.02)):
        request = recorder.start_request(model=model)
        request.slot_acquired()
        clock.now += ttft
        request.output()
        request.finish("stop", prompt_tokens=100, generation_tokens=1)
    frame = live_frame(recorder.snapshot(), None, 0.0, TITLE)
    assert _cells(frame, "stop") == ["-", "3"]
    assert _cells(frame, "prompt") == ["-", "300"]
    p50, _, _, count = _cells(frame, "TTFT")[1:]  # "TTFT qwen": the busiest, named
    assert _cells(frame, "TTFT")[0] == "qwen"
    assert (p50, count) == ("20ms", "2")
    assert len(frame) <= HEIGHT - 1
