"""The Makefile on a fresh machine: its own virtualenv, nothing from PATH, one line when venv
is missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS_FROM_PATH = ("ruff ", "mypy", "pytest", "pip ", "aiohttp-proxy")


def make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        ["make", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("target", ["run", "test", "demo", "bench", "storm", "e2e"])
def test_every_target_runs_from_the_projects_virtualenv(target: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    plan = make("-n", target, f"VENV={venv}")
    assert plan.returncode == 0, plan.stderr
    ran = []
    for line in plan.stdout.splitlines():
        words = line.split()
        while words and "=" in words[0]:  # VAR=value before the command
            words = words[1:]
        if not words or words[0].startswith("make") or words[0] in ("touch", "echo", "exit"):
            continue  # make's own lines (make[N]: Entering directory ...), the stamp, messages
        if words[1:3] == ["-m", "venv"]:  # making the virtualenv itself
            continue
        ran.append(words[0])
    assert ran
    assert set(ran) == {f"{venv}/bin/python"}, ran
    assert not any(f"\t{tool}" in plan.stdout for tool in TOOLS_FROM_PATH)


def test_a_python_without_venv_is_one_clear_line(tmp_path: Path) -> None:
    no_venv = tmp_path / "python3"
    no_venv.write_text("#!/bin/sh\necho 'ensurepip is not available' >&2\nexit 1\n")
    no_venv.chmod(0o755)
    result = make("install", f"PYTHON={no_venv}", f"VENV={tmp_path / 'venv'}")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert lines == [
        f"{no_venv} -m venv failed: install the venv module (Debian: apt-get install python3-venv)"
    ]
    assert not (tmp_path / "venv").exists()
