"""The real server (once per session), a plain client session, and proxies in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.e2e.exchange import Proxy
from tests.e2e.real_server import MODULES, RealServer, transformers_serve
from tests.support.tools import require_module

MODEL_LABEL = "tiny-llama"

ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """``transformers serve`` with the tiny model (skips locally without the e2e extra,
    fails in CI)."""
    for module in MODULES:
        require_module(module)
    with transformers_serve(tmp_path_factory.mktemp("transformers-serve")) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_proxy(
    real_server: RealServer,
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> ProxyFactory:
    """A proxy in this process in front of the real server; keyword settings for its Config."""

    async def build(**settings: Any) -> Proxy:
        config = Config(upstream_url=real_server.url, model_name=MODEL_LABEL, **settings)
        return Proxy(await aiohttp_client(create_app(config)))

    return build
