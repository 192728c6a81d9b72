"""Shared fixtures."""

from __future__ import annotations

import os
import shutil

import pytest


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    # .ci/run sets this: there, a missing tool is a failure, never a silent skip.
    if os.environ.get("METRICS_PROXY_REQUIRE_TOOLS"):
        pytest.fail(f"{name} is required here but is not on PATH")
    pytest.skip(f"{name} is not installed")


@pytest.fixture
def promtool() -> str:
    """The path of Prometheus's promtool (skips locally when absent, fails in CI)."""
    return _require_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    """The path of the Prometheus server (skips locally when absent, fails in CI)."""
    return _require_tool("prometheus")
