"""`make demo`: scripts/demo.py runs both servers, sends its burst and prints the metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _counts(text: str, family: str, label: str) -> dict[str, int]:
    pattern = rf"^  {re.escape(family)}\{{{label}=(\w+)\}} +(\d+)$"
    return {m[1]: int(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def test_the_demo_shows_every_outcome_in_the_proxys_metrics() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert "all series: model_name=demo-model engine=proxy" in out
    outcomes = _counts(out, "vllm:request_success_total", "finished_reason")
    assert all(outcomes[reason] > 0 for reason in ("stop", "length", "error", "abort")), outcomes
    seen = {m[2]: int(m[1]) for m in re.finditer(r"(\d+) x ([\w -]+?)(?:,|$)", _line(out))}
    assert seen["500"] == outcomes["error"]  # the simulator's 500s, as the clients saw them
    errors = _counts(out, "proxy_errors_total", "kind")
    assert errors["bad_request"] == 2
    assert errors["upstream_status"] == seen["500"] + 3  # and vLLM's two 404s and one 400
    assert seen["left mid-stream"] == 2
    assert _counts(out, "proxy_client_disconnects_total", "stage")["streaming"] == 2
    assert out.rstrip().endswith("Stopped both servers.")


def _line(text: str) -> str:
    """The demo's own tally of what its clients saw."""
    return next(line for line in text.splitlines() if line.startswith("Outcomes: "))
