"""Who may reach what: paths in any spelling, client keys, admin tokens, admin routes, and
the label values a client can choose."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from metrics_proxy.config import Config, ConfigError
from tests.support.processes import environ_without_settings, free_port, wait_until_serving
from tests.support.stack import Stack, StackFactory

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
BODY = b'{"messages": [], "stream": true}'


async def _post_raw_path(stack: Stack, raw_path: str, body: bytes, **kw: Any) -> int:
    """POST to a path exactly as spelled (no re-encoding by the client)."""
    url = URL(str(stack.client.make_url("/")).rstrip("/") + raw_path, encoded=True)
    async with aiohttp.ClientSession() as session, session.post(url, data=body, **kw) as response:
        await response.read()
        return response.status


async def _get_raw_path(stack: Stack, raw_path: str, **kw: Any) -> int:
    url = URL(str(stack.client.make_url("/")).rstrip("/") + raw_path, encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as response:
        await response.read()
        return response.status


# --- 1. no path around the meter ------------------------------------------------------------

DISGUISED = [
    "/v1/chat%2Fcompletions",
    "/v1/chat%2fcompletions",
    "/v1%2Fchat%2Fcompletions",
    "/v1%2fcompletions",
    "/v1%2Fcompletions",
    "/v1/chat%2Fcompletions?x=1",
]


@pytest.mark.parametrize("raw_path", DISGUISED)
async def test_a_metered_route_spelled_with_encoded_slashes_is_refused(
    make_stack: StackFactory, raw_path: str
) -> None:
    # The holes: with one slot taken, an encoded spelling was served at once, with a body
    # over the limit, and counted nowhere.
    stack = await make_stack(max_concurrency=1, max_body_size=100_000)
    large = b'{"messages": [], "pad": "' + b"x" * 200_000 + b'"}'
    assert await _post_raw_path(stack, raw_path, large) == 400
    assert await _post_raw_path(stack, raw_path, BODY) == 400
    assert stack.state.requests == []  # the upstream never saw either
    errors = await stack.value("http_requests_total", status="4xx")
    assert errors == 2


@pytest.mark.parametrize("raw_path", ["/internal%2Fmetrics", "/internal%2Freadyz"])
async def test_a_proxy_route_spelled_with_encoded_slashes_is_refused(
    stack: Stack, raw_path: str
) -> None:
    assert await _get_raw_path(stack, raw_path) == 400
    assert stack.state.requests == []


async def test_percent_escapes_that_aiohttp_decodes_reach_the_meter(stack: Stack) -> None:
    assert await _post_raw_path(stack, "/v1/chat/complet%69ons", BODY) == 200
    samples = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    assert sum(sample["value"] for sample in samples) == 1


async def test_a_double_encoded_slash_is_forwarded_unchanged(stack: Stack) -> None:
    status = await _post_raw_path(stack, "/v1/chat%252Fcompletions", BODY)
    assert status == 404  # the fake, like vLLM, has no such route
    (seen,) = stack.state.requests
    assert seen.raw_path == "/v1/chat%252Fcompletions"
    assert await stack.value("http_requests_total", handler="none", status="4xx") == 1


# --- 3. the admin token guards every metrics page ---------------------------------------------

ENGINE_METRICS = [
    "/metrics/",
    "/metricsX",
    "/metrics;x",
    "/metrics%2f",
    "/metrics%2F",
    "/metric%73/",
]


@pytest.mark.parametrize("raw_path", ENGINE_METRICS)
async def test_the_admin_token_guards_every_metrics_spelling(
    make_stack: StackFactory, raw_path: str
) -> None:
    stack = await make_stack(admin_token="t0ken")
    assert await _get_raw_path(stack, raw_path) == 401
    wrong = {"Authorization": "Bearer nope"}
    assert await _get_raw_path(stack, raw_path, headers=wrong) == 401
    assert stack.state.requests == []
    ok = {"Authorization": "Bearer t0ken"}
    assert await _get_raw_path(stack, raw_path, headers=ok) == 404  # reached the fake
    assert len(stack.state.requests) == 1


async def test_without_an_admin_token_engine_metrics_paths_are_forwarded(stack: Stack) -> None:
    assert await _get_raw_path(stack, "/metrics/") == 404
    assert len(stack.state.requests) == 1


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(make_stack: StackFactory, scheme: str) -> None:
    stack = await make_stack(admin_token="t0ken")
    response = await stack.client.get("/metrics", headers={"Authorization": f"{scheme} t0ken"})
    assert response.status == 200


async def _raw_request(stack: Stack, head: bytes) -> bytes:
    """Send raw bytes (headers no client library would send) and read the whole answer."""
    server = stack.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("path", [b"/metrics", b"/internal/metrics", b"/v1/models"])
async def test_a_non_utf8_authorization_is_401_not_500(
    make_stack: StackFactory, path: bytes
) -> None:
    stack = await make_stack(admin_token="t0ken", api_key="k1")
    answer = await _raw_request(
        stack,
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfek1\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
    assert stack.state.requests == []


@pytest.mark.parametrize("env", ["PROXY_ADMIN_TOKEN", "PROXY_API_KEY", "PROXY_UPSTREAM_API_KEY"])
def test_an_empty_secret_is_a_configuration_error(env: str) -> None:
    environ = environ_without_settings()
    environ |= {"PROXY_UPSTREAM_URL": "http://127.0.0.1:9", "PROXY_MODEL_NAME": "m", env: ""}
    result = subprocess.run(
        [sys.executable, "-m", "metrics_proxy.proxy_server"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert env in line
    assert "empty" in line
    assert "Traceback" not in result.stderr


# --- 10. the upstream key is not lent to anyone who asks -------------------------------------


def test_an_upstream_key_without_client_keys_does_not_start() -> None:
    with pytest.raises(ConfigError, match="--allow-unauthenticated"):
        Config(upstream_url="http://127.0.0.1:9", model_name="m", upstream_api_key="sk")
    Config(upstream_url="http://127.0.0.1:9", model_name="m", upstream_api_key="sk", api_key="k")
    Config(
        upstream_url="http://127.0.0.1:9",
        model_name="m",
        upstream_api_key="sk",
        allow_unauthenticated=True,
    )


def test_the_command_refuses_to_lend_the_upstream_key() -> None:
    environ = environ_without_settings()
    environ |= {"PROXY_UPSTREAM_API_KEY": "sk-CANARY"}
    command = [sys.executable, "-m", "metrics_proxy.proxy_server", "--upstream-url",
               "http://127.0.0.1:9", "--model-name", "m"]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "--api-key" in result.stderr
    assert "sk-CANARY" not in result.stderr


PROTECTED = [
    ("POST", CHAT),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("POST", "/v2/rerank"),
    ("POST", "/inference/v1/generate"),
    ("POST", "/cohere/v2/chat"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v%31/models"),  # decoded once: /v1/models
    # Outside vLLM 0.33's four prefixes too: the upstream key goes with every forwarded request.
    ("POST", "/tokenize"),
    ("POST", "/pooling"),
    ("POST", "/invocations"),
    ("GET", "/some/other/path"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_the_api_key_guards_vllms_protected_prefixes(
    make_stack: StackFactory, method: str, path: str
) -> None:
    stack = await make_stack(api_key="k1, k2", upstream_api_key="sk-up")
    url = URL(str(stack.client.make_url("/")).rstrip("/") + path, encoded=True)
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer k3"}, {"Authorization": "Basic k1"}):
            async with session.request(method, url, data=BODY, headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"]["type"] == "auth_error"
        assert stack.state.requests == []
        good = {"Authorization": "bearer k2"}
        async with session.request(method, url, data=BODY, headers=good) as response:
            await response.read()
            assert response.status != 401
    (seen,) = stack.state.requests
    assert seen.headers["Authorization"] == "Bearer sk-up"  # the client's key stays here


async def test_open_paths_and_preflights_need_no_api_key(make_stack: StackFactory) -> None:
    stack = await make_stack(api_key="k1")
    assert (await stack.client.get("/health")).status == 200
    assert (await stack.client.options("/v1/models")).status != 401
    assert (await stack.client.get("/internal/healthz")).status == 200
    assert len(stack.state.requests) == 2


ADMIN = [
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/sleep?level=1",
    "/wake_up",
    "/reset_prefix_cache",
    "/collective_rpc",
    "/abort_requests",
    "/sl%65ep",
    "/v1%2Fload_lora_adapter",
]


@pytest.mark.parametrize("raw_path", ADMIN)
async def test_admin_routes_are_refused(stack: Stack, raw_path: str) -> None:
    assert await _post_raw_path(stack, raw_path, b"{}") == 403
    assert stack.state.requests == []


async def test_admin_routes_can_be_opened(make_stack: StackFactory) -> None:
    stack = await make_stack(allow_admin_routes=True)
    assert await _post_raw_path(stack, "/sleep?level=1", b"{}") == 404  # reached the fake
    assert len(stack.state.requests) == 1


# --- 9. bounded label sets, vLLM's words ------------------------------------------------------


async def test_handlers_are_vllm_routes_templates_or_none(stack: Stack) -> None:
    for path in ("/v1/responses/resp_123", "/v1/responses/resp_9/cancel", "/x/y", "/v1/models"):
        await stack.client.get(path)
    samples = (await stack.snapshot())["http_requests_total"]["samples"]
    handlers = {s["labels"]["handler"] for s in samples}
    assert handlers == {
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/cancel",
        "none",
        "/v1/models",
    }


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_client_chosen_methods_fold_into_one_label(
    fake_upstream_url: str, parser: str
) -> None:
    upstream = fake_upstream_url
    port = free_port()
    env = environ_without_settings()
    if parser == "python":
        env["AIOHTTP_NO_EXTENSIONS"] = "1"  # this parser takes any token as a method
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "metrics_proxy.proxy_server", "--upstream-url", upstream,
        "--model-name", "m", "--host", "127.0.0.1", "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_until_serving(base, process)
        for n in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"M{n}ETHOD /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            async with asyncio.timeout(5):
                await reader.read()
            writer.close()
        async with aiohttp.ClientSession() as session:
            await (await session.get(base + "/v1/models")).read()
            async with session.get(base + "/internal/metrics") as response:
                families = {f["name"]: f for f in (await response.json())["families"]}
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
    methods = {s["labels"]["method"] for s in families["http_requests_total"]["samples"]}
    assert methods <= {"GET", "other"}
    assert "GET" in methods


# --- credentials in the upstream URL ------------------------------------------------------------


async def test_credentials_in_the_upstream_url_go_as_basic_auth(make_stack: StackFactory) -> None:
    probe = await make_stack()  # its fake upstream is the one the URL names
    port = probe.upstream.port
    stack = await make_stack(
        upstream_url=f"http://us%40er:pa%3Ass@127.0.0.1:{port}", api_key="client-key"
    )
    response = await stack.client.post(
        CHAT, data=BODY, headers={"Authorization": "Bearer client-key"}
    )
    await response.read()
    assert response.status == 200
    (seen,) = probe.state.requests  # the upstream the URL names
    assert seen.headers["Authorization"] == "Basic dXNAZXI6cGE6c3M="  # us@er:pa:ss
    assert "pa%3Ass" not in repr(stack.config)


def test_a_bad_url_is_quoted_without_its_password() -> None:
    with pytest.raises(ConfigError) as raised:
        Config(upstream_url="ftp://user:SECRETPW@127.0.0.1:9", model_name="m")
    assert "SECRETPW" not in str(raised.value)
    with pytest.raises(ConfigError, match="--allow-unauthenticated"):
        Config(upstream_url="http://user:pw@127.0.0.1:9", model_name="m")


def test_an_api_key_of_separators_alone_is_refused() -> None:
    with pytest.raises(ConfigError, match="holds no key"):
        Config(upstream_url="http://127.0.0.1:9", model_name="m", api_key=" , ,")


async def test_a_non_utf8_content_encoding_is_415_not_500(stack: Stack) -> None:
    answer = await _raw_request(
        stack,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Encoding: \xff\xfe\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 415 "), answer[:80]
    assert await stack.value("http_requests_total", handler=CHAT, status="4xx") == 1
