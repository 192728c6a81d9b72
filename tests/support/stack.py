"""A proxy in front of the fake upstream, both on loopback: the fixtures most tests start from."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.support.fake_upstream import (
    BEHAVIOR_HEADER,
    FAKE_STATE,
    Behavior,
    FakeUpstreamState,
    make_fake_upstream,
)


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

    async def counts(self) -> tuple[float, float, float]:
        """(prompt tokens, generation tokens, estimated counts)."""
        return (
            await self.value("vllm:prompt_tokens_total"),
            await self.value("vllm:generation_tokens_total"),
            await self.value("proxy_estimated_token_counts_total"),
        )

    async def observed(self, name: str) -> int:
        """How many observations a histogram holds."""
        return int((await self.value(name))["count"])

    async def through_and_direct(
        self, path: str, body: bytes, behavior: str = "{}"
    ) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        """(status, bytes) through the proxy and straight from the upstream, same request."""
        headers = {BEHAVIOR_HEADER: behavior}
        response = await self.client.post(path, data=body, headers=headers)
        through = (response.status, await response.read())
        async with aiohttp.ClientSession() as session:
            url = self.upstream.make_url(path)
            async with session.post(url, data=body, headers=headers) as direct:
                return through, (direct.status, await direct.read())

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
    """Build a Stack: ``behavior`` for the fake, ``models`` the entries it lists in /v1/models
    from the start (a router's), keyword settings for the proxy's Config."""

    async def build(
        behavior: Behavior | None = None,
        models: list[dict[str, Any]] | None = None,
        **settings: Any,
    ) -> Stack:
        upstream_app = make_fake_upstream(behavior)
        upstream_app[FAKE_STATE].model_list = models
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


@pytest.fixture
async def fake_upstream_url(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """The base URL of a fake upstream on loopback, for a proxy started as a command."""
    server = await aiohttp_server(make_fake_upstream())
    return str(server.make_url("")).rstrip("/")
