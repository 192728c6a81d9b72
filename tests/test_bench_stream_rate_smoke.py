"""benchmarks/bench_stream_rate.py runs end to end: tiny counts, no timing asserted."""

from __future__ import annotations

import subprocess
import sys
import xml.dom.minidom
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_quick_stream_rate_prints_its_table_and_draws_its_curve(tmp_path: Path) -> None:
    figure = tmp_path / "stream_rate.svg"
    # No nginx: the smoke run needs no Debian package, never skips.
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_stream_rate.py"), "--quick"]
    argv += ["--no-nginx", "--lanes", "proxy,baseline", "--svg", str(figure)]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout
    assert out.startswith("## Engine-rate streaming\n")
    assert "| offered | lane | delivered | p50 | p99 | added p50 | added p99 |" in out
    for lane in ("direct", "metrics_proxy", "bare aiohttp"):
        assert f"(C=10) | {lane} |" in out
    assert "| mean inter-token latency (" in out
    assert "| TTFT sum per request (" in out
    assert "Notes:" not in out, out  # no failed or cut stream
    svg = figure.read_text()
    xml.dom.minidom.parseString(svg)  # well-formed
    assert svg.count("<polyline") == 4  # two lanes, two panels
