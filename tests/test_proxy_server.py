"""Tests for metrics_proxy.proxy_server: flags over environment, help text, error exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from metrics_proxy.cli import build_parser, parse_config
from tests.support.processes import environ_without_settings

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_ARGS = ["--upstream-url", "http://127.0.0.1:8001", "--model-name", "m"]

# (flag, env var, what --help says about its default), written out rather than read from
# SETTINGS so the test pins the user-facing contract.
HELP_FACTS = [
    ("--upstream-url", "PROXY_UPSTREAM_URL", "required"),
    ("--model-name", "PROXY_MODEL_NAME", "required"),
    ("--host", "PROXY_HOST", "default 0.0.0.0"),
    ("--port", "PROXY_PORT", "default 8000"),
    ("--engine-label", "PROXY_ENGINE_LABEL", "default proxy"),
    ("--max-concurrency", "PROXY_MAX_CONCURRENCY", "default 0"),
    ("--max-model-len", "PROXY_MAX_MODEL_LEN", "default 8192"),
    ("--connect-timeout", "PROXY_CONNECT_TIMEOUT", "default 10"),
    ("--read-timeout", "PROXY_READ_TIMEOUT", "default 600"),
    ("--write-timeout", "PROXY_WRITE_TIMEOUT", "default 60"),
    ("--request-timeout", "PROXY_REQUEST_TIMEOUT", "default 0"),
    ("--disable-metrics-endpoint", "PROXY_DISABLE_METRICS_ENDPOINT", "default false"),
    ("--log-level", "PROXY_LOG_LEVEL", "default INFO"),
    ("--stream-usage", "PROXY_STREAM_USAGE", "default include"),
    ("--max-body-size", "PROXY_MAX_BODY_SIZE", "default 33554432"),
]


def help_text() -> str:
    # argparse wraps at the terminal width; compare with whitespace collapsed.
    return " ".join(build_parser().format_help().split())


def test_parse_config_from_flags_only() -> None:
    config = parse_config([*REQUIRED_ARGS, "--port", "9000", "--read-timeout", "2.5"], {})
    assert (config.upstream_url, config.model_name) == ("http://127.0.0.1:8001", "m")
    assert (config.port, config.read_timeout) == (9000, 2.5)
    assert config.write_timeout == 60.0


def test_parse_config_from_environment_only() -> None:
    environ = {
        "PROXY_UPSTREAM_URL": "http://up:8001/prefix/",
        "PROXY_MODEL_NAME": "llama",
        "PROXY_MAX_CONCURRENCY": "8",
        "PROXY_LOG_LEVEL": "debug",
    }
    config = parse_config([], environ)
    assert config.upstream_url == "http://up:8001/prefix"
    assert (config.model_name, config.max_concurrency, config.log_level) == ("llama", 8, "DEBUG")


def test_flag_beats_env_beats_default() -> None:
    environ = {"PROXY_PORT": "9001", "PROXY_HOST": "10.0.0.1", "PROXY_STREAM_USAGE": "none"}
    config = parse_config([*REQUIRED_ARGS, "--port", "9002"], environ)
    assert config.port == 9002
    assert config.host == "10.0.0.1"
    assert config.stream_usage == "none"
    assert config.engine_label == "proxy"


def test_flag_overrides_a_bad_env_value() -> None:
    config = parse_config([*REQUIRED_ARGS, "--port", "1"], {"PROXY_PORT": "abc"})
    assert config.port == 1


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, False),
        ([], {"PROXY_DISABLE_METRICS_ENDPOINT": "on"}, True),
        ([], {"PROXY_DISABLE_METRICS_ENDPOINT": "0"}, False),
        (["--disable-metrics-endpoint"], {}, True),
        (["--disable-metrics-endpoint"], {"PROXY_DISABLE_METRICS_ENDPOINT": "false"}, True),
        (["--disable-metrics-endpoint"], {"PROXY_DISABLE_METRICS_ENDPOINT": "junk"}, True),
    ],
)
def test_disable_metrics_endpoint_flag_and_env(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    config = parse_config([*REQUIRED_ARGS, *argv], environ)
    assert config.disable_metrics_endpoint is expected


def test_negative_number_is_taken_as_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config([*REQUIRED_ARGS, "--read-timeout", "-1"], {})
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aiohttp-proxy: error: ")
    assert err.count("\n") == 1  # one line, no usage block
    assert "--read-timeout (PROXY_READ_TIMEOUT): '-1' must be >= 0" in err


def test_bad_env_value_exits_naming_the_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(REQUIRED_ARGS, {"PROXY_MAX_BODY_SIZE": "big"})
    assert info.value.code == 2
    assert "PROXY_MAX_BODY_SIZE): 'big' is not an integer" in capsys.readouterr().err


def test_unknown_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config([*REQUIRED_ARGS, "--prot", "1"], {})
    assert info.value.code == 2
    assert "--prot" in capsys.readouterr().err


def test_help_lists_every_flag_with_env_and_default() -> None:
    text = help_text()
    assert text.startswith("usage: aiohttp-proxy")
    for flag, env, default in HELP_FACTS:
        assert flag in text
        assert f"(env {env}, {default})" in text, flag


def test_help_never_echoes_environment_values() -> None:
    secret = "http://user:s3cret@127.0.0.1:8001"
    with mock.patch.dict(os.environ, {"PROXY_UPSTREAM_URL": secret}):
        text = help_text()
    assert "s3cret" not in text


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # A clean PROXY_* slate, so the developer's own environment cannot leak into the result.
    environ = environ_without_settings()
    return subprocess.run(
        [sys.executable, "-m", "metrics_proxy.proxy_server", *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (REQUIRED_ARGS, {"PROXY_PORT": "abc"}, "--port (PROXY_PORT): 'abc' is not an integer"),
        (
            [*REQUIRED_ARGS, "--read-timeout", "-1"],
            {},
            "--read-timeout (PROXY_READ_TIMEOUT): '-1' must be >= 0",
        ),
        (
            ["--upstream-url", "localhost:8001", "--model-name", "m"],
            {},
            "--upstream-url (PROXY_UPSTREAM_URL): 'localhost:8001' must start with http://",
        ),
        (
            ["--upstream-url", "http://127.0.0.1:8001"],
            {},
            "missing required setting --model-name (PROXY_MODEL_NAME)",
        ),
        # No upstream and no --simulate: the proxy never makes answers up unasked.
        (["--model-name", "m"], {}, "missing required setting --upstream-url (PROXY_UPSTREAM_URL)"),
        (
            [*REQUIRED_ARGS, "--simulate"],
            {},
            "--simulate (PROXY_SIMULATE) serves a simulated upstream, but --upstream-url",
        ),
        (
            ["--model-name", "m", "--simulate", "--simulate-options", "--ttft soon"],
            {},
            "invalid value for --simulate-options (PROXY_SIMULATE_OPTIONS): argument --ttft: "
            "'soon' is not a number",
        ),
        (
            ["--model-name", "m"],
            {"PROXY_SIMULATE": "yes", "PROXY_SIMULATE_OPTIONS": "--port 1"},
            "invalid value for --simulate-options (PROXY_SIMULATE_OPTIONS): unrecognized "
            "arguments: --port 1",
        ),
    ],
)
def test_cli_exits_2_with_one_short_message(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_cli(*args, **env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1  # the line that says what is wrong, and nothing else
    assert lines[-1].startswith("aiohttp-proxy: error: ")
    assert expected in lines[-1]


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "metrics_proxy"],
        [sys.executable, "-m", "metrics_proxy.proxy_server"],
    ],
)
def test_every_spelling_of_the_command_is_the_same_command(command: list[str]) -> None:
    environ = environ_without_settings()
    result = subprocess.run(
        [*command, "--help"], cwd=ROOT, env=environ, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.startswith("usage: aiohttp-proxy")


def test_the_tenant_salt_is_read_from_the_environment_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "salt-on-the-command-line" not in help_text()
    assert "--tenant-salt" not in help_text()
    with pytest.raises(SystemExit) as info:
        parse_config([*REQUIRED_ARGS, "--tenant-salt", "salt-on-the-command-line"], {})
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        parse_config([*REQUIRED_ARGS, "--tenant-from-api-key"], {})
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("aiohttp-proxy: error: --tenant-from-api-key")
    assert "PROXY_TENANT_SALT" in err
    salted = {"PROXY_TENANT_SALT": "a fleet-wide salt of 16+"}
    config = parse_config([*REQUIRED_ARGS, "--tenant-from-api-key"], salted)
    assert config.tenant_salt == salted["PROXY_TENANT_SALT"]
