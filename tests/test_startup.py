"""Mistakes caught where they happen: an upstream URL ending in /v1 is corrected, the upstream
is looked at once as the command starts (never holding the start up), and a bad setting is
one line and exit status 2, whatever its kind."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.command import ProxyCommand
from tests.support.processes import free_port
from tests.test_proxy_server import run_cli

CHAT = "/v1/chat/completions"


async def test_an_upstream_url_ending_in_v1_is_corrected_with_a_warning(
    fake_upstream_url: str,
) -> None:
    proxy = await ProxyCommand.start(
        "--upstream-url", fake_upstream_url + "/v1/", "--model-name", "fake-model"
    )
    try:
        url = await proxy.serving()
        async with aiohttp.ClientSession() as session:
            body = b'{"messages": [], "stream": true}'
            async with session.post(url + CHAT, data=body) as response:
                assert response.status == 200  # not /v1/v1/chat/completions, a 404
                await response.read()
    finally:
        stderr = await proxy.stop()
    (warning,) = [line for line in stderr.decode().splitlines() if " WARNING " in line]
    assert "--upstream-url (PROXY_UPSTREAM_URL)" in warning
    assert f"'{fake_upstream_url}/v1' ends in /v1" in warning
    assert warning.endswith(f"using '{fake_upstream_url}'")
    assert f"upstream {fake_upstream_url}, model" in stderr.decode()


# --- the start-up check ------------------------------------------------------------------------


async def test_an_unreachable_upstream_is_a_warning_and_the_proxy_serves_anyway() -> None:
    port = free_port()  # nothing listens there
    proxy = await ProxyCommand.start(
        "--upstream-url", f"http://127.0.0.1:{port}", "--model-name", "m"
    )
    try:
        url = await proxy.serving()
        line = await proxy.line_matching(rb" WARNING ")
        async with aiohttp.ClientSession() as session, session.get(url + "/internal/healthz") as r:
            assert r.status == 200
    finally:
        await proxy.stop()
    assert (
        line.decode()
        .rstrip()
        .endswith(
            f"upstream http://127.0.0.1:{port} is unreachable: connect to 127.0.0.1:{port}: "
            "connection refused; requests fail until it answers"
        )
    )


@pytest.mark.parametrize(
    ("model", "mismatch"), [("fake-model", False), ("my-model", True)], ids=["match", "mismatch"]
)
async def test_the_models_the_upstream_serves_are_logged(
    fake_upstream_url: str, model: str, mismatch: bool
) -> None:
    proxy = await ProxyCommand.start("--upstream-url", fake_upstream_url, "--model-name", model)
    try:
        await proxy.serving()
        served = await proxy.line_matching(rb" serves ")
        if mismatch:
            warning = await proxy.line_matching(rb" WARNING ")
    finally:
        stderr = await proxy.stop()
    assert " INFO " in served.decode()
    assert (
        served.decode()
        .rstrip()
        .endswith(f"upstream {fake_upstream_url} serves 1 models: fake-model")
    )
    if mismatch:
        assert (
            warning.decode()
            .rstrip()
            .endswith(
                "--model-name my-model is not a model the upstream serves: the model_name label of "
                "the proxy's series will differ from vLLM's own"
            )
        )
    else:
        assert b" WARNING " not in stderr


async def test_with_model_name_auto_the_models_served_get_series(fake_upstream_url: str) -> None:
    proxy = await ProxyCommand.start("--upstream-url", fake_upstream_url, "--model-name", "auto")
    try:
        await proxy.serving()
        served = await proxy.line_matching(rb" serves ")
        series = await proxy.line_matching(rb"--model-name auto: ")
    finally:
        stderr = await proxy.stop()
    assert served.decode().rstrip().endswith("serves 1 models: fake-model")
    assert series.decode().rstrip().endswith("series for 1 more models: fake-model")
    assert b" WARNING " not in stderr  # no one --model-name to find among them
    assert stderr.count(b" serves ") == 1  # the watch's first read is the start-up check


@pytest.fixture
async def keyed_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """An upstream that answers /v1/models only with its key, 404 anything else."""

    async def models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-CANARY":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
async def test_the_check_uses_the_upstream_key_and_never_logs_it(
    keyed_upstream: str, with_key: bool
) -> None:
    flags = ["--upstream-api-key", "sk-CANARY", "--api-key", "k"] if with_key else []
    proxy = await ProxyCommand.start("--upstream-url", keyed_upstream, "--model-name", "m1", *flags)
    try:
        await proxy.serving()
        line = await proxy.line_matching(rb" serves | WARNING ")
    finally:
        stderr = await proxy.stop()
    if with_key:
        assert line.decode().rstrip().endswith("serves 2 models: m1, m2")
    else:
        assert (
            line.decode()
            .rstrip()
            .endswith(
                f'upstream {keyed_upstream}: GET /v1/models: "upstream answered 401: bad key"'
            )
        )
    assert b"CANARY" not in stderr


@dataclass
class SilentUpstream:
    url: str
    connected: asyncio.Event  # set once someone connected


@pytest.fixture
async def silent_upstream() -> AsyncIterator[SilentUpstream]:
    """Accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield SilentUpstream(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connected)
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_the_check_gives_up_after_the_connect_timeout(
    silent_upstream: SilentUpstream,
) -> None:
    url = silent_upstream.url
    proxy = await ProxyCommand.start(
        "--upstream-url", url, "--model-name", "m", "--connect-timeout", "0.3"
    )
    try:
        await proxy.serving()
        line = await proxy.line_matching(rb" WARNING ", timeout=10)
    finally:
        await proxy.stop()
    assert (
        line.decode()
        .rstrip()
        .endswith(
            f"upstream {url} is unreachable: no answer to GET /v1/models within "
            "300 ms; requests fail until it answers"
        )
    )


async def test_a_shutdown_does_not_wait_for_the_check(silent_upstream: SilentUpstream) -> None:
    # No connect limit: the check would wait 10 s for an answer that never comes.
    proxy = await ProxyCommand.start(
        "--upstream-url", silent_upstream.url, "--model-name", "m", "--connect-timeout", "0"
    )
    try:
        await proxy.serving()
        async with asyncio.timeout(10):
            await silent_upstream.connected.wait()  # the check is under way
    finally:
        async with asyncio.timeout(5):
            stderr = await proxy.stop()  # exit 0, well before the check's bound
    assert b"Traceback" not in stderr
    assert b"Task was destroyed" not in stderr
    assert b"unreachable" not in stderr


# --- a bad setting: one line, exit 2 -------------------------------------------------------------

REQUIRED = ["--upstream-url", "http://127.0.0.1:9", "--model-name", "m", "--port", "0"]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([*REQUIRED, "stray\nargument"], {}, "unrecognized arguments: stray\\nargument"),
        (
            [*REQUIRED, "--host", "nohost.invalid"],
            {},
            "--host (PROXY_HOST): 'nohost.invalid' does not resolve",
        ),
        (
            [*REQUIRED, "--host", "192.0.2.1"],  # TEST-NET-1: never this machine's
            {},
            "--host (PROXY_HOST): '192.0.2.1' is no address of this machine",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:9"],
            {"PROXY_MODEL_NAME": "\udcff"},  # bytes that are no UTF-8, as the environment may
            "--model-name (PROXY_MODEL_NAME): '\\udcff' is not valid UTF-8",
        ),
        (
            ["--model-name", "m"],
            {"PROXY_UPSTREAM_URL": "http://vllm host:8000"},
            "--upstream-url (PROXY_UPSTREAM_URL): 'http://vllm host:8000' has an invalid host",
        ),
        (
            ["--upstream-url", "http://[::1", "--model-name", "m"],
            {},
            "--upstream-url (PROXY_UPSTREAM_URL): 'http://[::1' is not a URL",
        ),
    ],
    ids=["newline", "host-unresolved", "host-elsewhere", "not-utf-8", "url-space", "url-broken"],
)
def test_a_bad_setting_of_any_kind_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli(*args, **env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert re.match(r"aiohttp-proxy: error: ", line)
    assert expected in line
