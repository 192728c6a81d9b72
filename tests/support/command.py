"""The proxy command in a process of its own, its standard error read as it comes: the
start-up lines awaited one by one (bounded), the rest kept for the test to read."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
_LISTENING = re.compile(rb"listening on \('127\.0\.0\.1', (\d+)\)")


class ProxyCommand:
    """``python -m metrics_proxy.proxy_server`` on a free loopback port, without the
    developer's own PROXY_* settings."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr = b""

    @classmethod
    async def start(cls, *flags: str, env: dict[str, str] | None = None) -> ProxyCommand:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metrics_proxy.proxy_server",
            "--host", "127.0.0.1", "--port", "0", *flags,
            cwd=ROOT, env=clean | (env or {}), stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(process)

    async def line_matching(self, pattern: bytes, timeout: float = 20) -> bytes:
        """The next line of standard error that matches ``pattern`` (every line read is
        kept in ``stderr``)."""
        assert self.process.stderr is not None
        async with asyncio.timeout(timeout):
            while line := await self.process.stderr.readline():
                self.stderr += line
                if re.search(pattern, line):
                    return line
        raise AssertionError(f"the proxy exited without {pattern!r}: {self.stderr!r}")

    async def serving(self) -> str:
        """The proxy's base URL, once it says it listens."""
        line = await self.line_matching(_LISTENING.pattern)
        found = _LISTENING.search(line)
        assert found is not None
        return f"http://127.0.0.1:{int(found[1])}"

    async def stop(self) -> bytes:
        """SIGINT, then the whole of standard error; the proxy must exit 0."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, rest = await self.process.communicate()
        self.stderr += rest
        assert self.process.returncode == 0, self.stderr
        return self.stderr

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
