"""benchmarks/bench_proxy.py runs end to end: tiny counts, pure-Python load, no timing asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_its_table() -> None:
    # The pure-Python load and no nginx: the smoke run needs no Debian package, never skips.
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_proxy.py"), "--quick"]
    argv += ["--load", "python", "--no-nginx", "--no-uvloop"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert out.startswith("## Proxy vs direct vs nginx\n")
    assert "| figure | metrics_proxy | bare aiohttp | nginx | direct |" in out
    for figure in (
        "| CPU per non-streaming request, c16 |",
        "| added p50 latency, c1 |",
        "-chunk streams as fast as they go, c16) |",
        "| CPU per streamed chunk (one chunk per stream every 5 ms, c64) |",
        "| added TTFT p99, 20 streams opened at once |",
        "| added TTFT p99, 20 streams opened over 0.1 s |",
        "| RSS per held stream, ",
        "| GET /metrics p50, idle after traffic ",
        "| CPU per request with --tenant-header (8 tenants) |",
        "| CPU per request with --tenant-from-api-key (an HMAC each) |",
        "| GET /metrics p50 with 100 tenants' series (",
        "| soak: RSS after ",
        "CPU per request with `--model-name auto`",
    ):
        assert figure in out
    assert "Targets:" in out
    assert "Notes:" not in out, out  # no load errors
