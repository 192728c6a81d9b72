"""Secure deployment: an HTTPS upstream with its own CA, an upstream API key, an admin token."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import make_fake_upstream
from tests.support.processes import environ_without_settings
from tests.support.stack import StackFactory

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
STREAM = b'{"messages": [], "stream": true}'


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstream(
    ca: trustme.CA, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return await aiohttp_server(make_fake_upstream(), ssl=context)


async def test_https_upstream_with_a_custom_ca_bundle(
    make_stack: StackFactory, tls_upstream: TestServer, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    url = f"https://127.0.0.1:{tls_upstream.port}"
    stack = await make_stack(upstream_url=url, upstream_ca_bundle=str(bundle))
    response = await stack.client.post(CHAT, data=STREAM)
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")


async def test_https_upstream_with_an_unknown_ca_is_refused(
    make_stack: StackFactory, tls_upstream: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="metrics_proxy")
    stack = await make_stack(upstream_url=f"https://127.0.0.1:{tls_upstream.port}")
    response = await stack.client.post(CHAT, data=STREAM)
    assert response.status == 502
    assert await stack.value("proxy_errors_total", kind="connect") == 1
    (record,) = caplog.records
    cause = f"connect to 127.0.0.1:{tls_upstream.port}: TLS certificate rejected"
    assert f'cause="{cause} (unable to get local issuer certificate)"' in record.getMessage()


async def test_verification_can_be_turned_off_explicitly(
    make_stack: StackFactory, tls_upstream: TestServer
) -> None:
    url = f"https://127.0.0.1:{tls_upstream.port}"
    stack = await make_stack(upstream_url=url, upstream_insecure=True)
    response = await stack.client.post(CHAT, data=STREAM)
    assert response.status == 200
    await response.read()


def test_an_unreadable_ca_bundle_stops_the_command(tmp_path: Path) -> None:
    env = environ_without_settings()
    missing = tmp_path / "nope.pem"
    result = subprocess.run(
        [sys.executable, "-m", "metrics_proxy.proxy_server", "--upstream-url",
         "https://127.0.0.1:9", "--model-name", "m", "--upstream-ca-bundle", str(missing)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--upstream-ca-bundle" in result.stderr
    assert "Traceback" not in result.stderr


async def test_upstream_api_key_replaces_the_clients_and_is_never_logged(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await make_stack(upstream_api_key="sk-upstream-secret", allow_unauthenticated=True)
    response = await stack.client.post(
        CHAT, data=STREAM, headers={"Authorization": "Bearer client-key"}
    )
    await response.read()
    (seen,) = stack.state.requests
    assert seen.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert "sk-upstream-secret" not in caplog.text
    assert "sk-upstream-secret" not in repr(stack.config)


async def test_admin_token_guards_the_metrics_routes_only(make_stack: StackFactory) -> None:
    stack = await make_stack(admin_token="t0ken")
    for path in ("/metrics", "/internal/metrics"):
        denied = await stack.client.get(path)
        assert denied.status == 401
        assert denied.headers["WWW-Authenticate"] == "Bearer"
        wrong = await stack.client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        allowed = await stack.client.get(path, headers={"Authorization": "Bearer t0ken"})
        assert allowed.status == 200
    # Probes and model traffic stay open.
    assert (await stack.client.get("/internal/healthz")).status == 200
    assert (await stack.client.post(CHAT, data=STREAM)).status == 200
    assert "t0ken" not in repr(stack.config)
