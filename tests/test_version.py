"""`aiohttp-proxy --version`: the installed package's version, from its metadata, exit 0."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.processes import environ_without_settings

SCRIPT = Path(sys.executable).with_name("aiohttp-proxy")


def spellings() -> list[list[str]]:
    found = [
        [sys.executable, "-m", "metrics_proxy"],
        [sys.executable, "-m", "metrics_proxy.proxy_server"],
    ]
    # The console script pip installed beside this interpreter (the README's command).
    return [[str(SCRIPT)], *found] if SCRIPT.exists() else found


@pytest.mark.parametrize("command", spellings(), ids=lambda command: Path(command[-1]).name)
def test_version_prints_the_installed_version_and_exits_0(
    command: list[str], tmp_path: Path
) -> None:
    # Outside the checkout, with no setting given: --version needs none of them.
    result = subprocess.run(
        [*command, "--version"], cwd=tmp_path, env=environ_without_settings(),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"aiohttp-proxy {metadata.version('metrics-proxy')}\n"
