"""The real command in its own process: a free loopback port, its start awaited (bounded),
and an environment without the developer's own PROXY_* settings."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_serving(
    url: str, process: asyncio.subprocess.Process, path: str = "/internal/healthz"
) -> None:
    """Poll the liveness route until it answers (bounded): a bound port has no event to await."""
    async with asyncio.timeout(20), aiohttp.ClientSession() as session:
        while True:
            assert process.returncode is None, "the server exited during start-up"
            try:
                async with session.get(url + path) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


def environ_without_settings() -> dict[str, str]:
    """This process's environment less PROXY_* variables, so none leaks into a test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}


@pytest.fixture
def clean_environ() -> dict[str, str]:
    return environ_without_settings()
