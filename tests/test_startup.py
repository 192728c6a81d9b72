"""Mistakes caught where they happen: an upstream URL ending in /v1 is corrected, and a bad
setting is one line and exit status 2, whatever its kind."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.support.command import ProxyCommand
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
