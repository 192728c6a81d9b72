"""Tests for metrics_proxy.config: defaults, environment, precedence and every rule."""

from __future__ import annotations

import dataclasses

import pytest

from metrics_proxy.config import (
    SETTINGS,
    SIMULATED_UPSTREAM,
    Config,
    ConfigError,
    SettingCorrected,
    seconds_or_none,
)

REQUIRED = {"PROXY_UPSTREAM_URL": "http://127.0.0.1:8001", "PROXY_MODEL_NAME": "m"}


def from_env(**env: str) -> Config:
    return Config.from_env({**REQUIRED, **env})


def error_for(env: dict[str, str], **overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        Config.from_env({**REQUIRED, **env}, **overrides)
    return str(info.value)


def test_defaults() -> None:
    config = from_env()
    assert config == Config(upstream_url="http://127.0.0.1:8001", model_name="m")
    assert (config.host, config.port, config.engine_label) == ("0.0.0.0", 8000, "proxy")
    assert (config.max_concurrency, config.max_model_len) == (0, 8192)
    assert config.connect_timeout == 10.0
    assert config.read_timeout == 600.0
    assert config.write_timeout == 60.0
    assert config.request_timeout == 0.0
    assert config.upstream_keepalive_timeout == 4.0  # below vLLM's (uvicorn's) 5 s
    assert config.disable_metrics_endpoint is False
    assert config.log_level == "INFO"
    assert config.stream_usage == "include"
    assert config.max_body_size == 32 * 1024 * 1024


def test_config_is_frozen_and_slotted() -> None:
    config = from_env()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    assert not hasattr(config, "__dict__")


def test_table_covers_every_field_once() -> None:
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(Config)]
    assert len({s.env for s in SETTINGS}) == len({s.flag for s in SETTINGS}) == len(SETTINGS)


def test_every_env_var_is_read() -> None:
    config = Config.from_env(
        {
            "PROXY_UPSTREAM_URL": "https://up.example:9000/prefix",
            "PROXY_MODEL_NAME": "llama",
            "PROXY_HOST": "127.0.0.1",
            "PROXY_PORT": "9001",
            "PROXY_ENGINE_LABEL": "e1",
            "PROXY_MAX_CONCURRENCY": "4",
            "PROXY_MAX_MODEL_LEN": "4096",
            "PROXY_CONNECT_TIMEOUT": "1.5",
            "PROXY_READ_TIMEOUT": "2",
            "PROXY_WRITE_TIMEOUT": "3",
            "PROXY_REQUEST_TIMEOUT": "4.25",
            "PROXY_DISABLE_METRICS_ENDPOINT": "yes",
            "PROXY_LOG_LEVEL": "warning",
            "PROXY_STREAM_USAGE": "continuous",
            "PROXY_MAX_BODY_SIZE": "1024",
        }
    )
    assert config == Config(
        upstream_url="https://up.example:9000/prefix",
        model_name="llama",
        host="127.0.0.1",
        port=9001,
        engine_label="e1",
        max_concurrency=4,
        max_model_len=4096,
        connect_timeout=1.5,
        read_timeout=2.0,
        write_timeout=3.0,
        request_timeout=4.25,
        disable_metrics_endpoint=True,
        log_level="WARNING",
        stream_usage="continuous",
        max_body_size=1024,
    )


def test_unrelated_env_vars_are_ignored() -> None:
    assert from_env(PORT="1", PROXY_UNKNOWN="x").port == 8000


def test_flag_beats_env_beats_default() -> None:
    env = {**REQUIRED, "PROXY_PORT": "9001", "PROXY_READ_TIMEOUT": "5"}
    config = Config.from_env(env, port="9002", host="::1")
    assert config.port == 9002  # flag over env
    assert config.host == "::1"  # flag over default
    assert config.read_timeout == 5.0  # env over default
    assert config.write_timeout == 60.0  # default


def test_overrides_may_be_typed_and_none_means_not_given() -> None:
    config = Config.from_env(
        {**REQUIRED, "PROXY_PORT": "9001"}, port=None, read_timeout=3, disable_metrics_endpoint=True
    )
    assert config.port == 9001
    assert config.read_timeout == 3.0
    assert isinstance(config.read_timeout, float)
    assert config.disable_metrics_endpoint is True


def test_flags_alone_satisfy_required_settings() -> None:
    config = Config.from_env({}, upstream_url="http://h", model_name="m")
    assert (config.upstream_url, config.model_name) == ("http://h", "m")


def test_a_bad_env_value_beaten_by_a_flag_is_not_an_error() -> None:
    assert Config.from_env({**REQUIRED, "PROXY_PORT": "abc"}, port="1").port == 1


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="prot"):
        Config.from_env(REQUIRED, prot="1")


@pytest.mark.parametrize("missing", ["PROXY_UPSTREAM_URL", "PROXY_MODEL_NAME"])
def test_missing_required_setting(missing: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    flag = "--" + missing.removeprefix("PROXY_").lower().replace("_", "-")
    assert str(info.value) == f"missing required setting {flag} ({missing})"


def test_error_message_names_flag_env_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        from_env(PROXY_PORT="abc")
    assert str(info.value) == "invalid value for --port (PROXY_PORT): 'abc' is not an integer"
    assert info.value.setting == "port"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("PROXY_PORT", "abc", "'abc' is not an integer"),
        ("PROXY_PORT", "80.5", "'80.5' is not an integer"),
        ("PROXY_PORT", "", "'' is not an integer"),
        # A Kubernetes Service named "proxy" sets PROXY_PORT for every pod in its namespace.
        (
            "PROXY_PORT",
            "tcp://10.0.0.7:8000",
            "'tcp://10.0.0.7:8000' is not an integer: it looks like the address Kubernetes "
            "sets for a Service named after this variable; set enableServiceLinks: false in "
            "the pod spec",
        ),
        ("PROXY_PORT", "-1", "'-1' must be between 0 and 65535"),
        ("PROXY_PORT", "65536", "'65536' must be between 0 and 65535"),
        ("PROXY_MAX_CONCURRENCY", "-1", "'-1' must be >= 0"),
        ("PROXY_MAX_MODEL_LEN", "0", "'0' must be >= 1"),
        ("PROXY_MAX_BODY_SIZE", "0", "'0' must be >= 1"),
        ("PROXY_MAX_BODY_SIZE", "1MB", "'1MB' is not an integer"),
        ("PROXY_CONNECT_TIMEOUT", "soon", "'soon' is not a number"),
        ("PROXY_READ_TIMEOUT", "-1", "'-1' must be >= 0"),
        ("PROXY_WRITE_TIMEOUT", "-0.5", "'-0.5' must be >= 0"),
        ("PROXY_REQUEST_TIMEOUT", "nan", "'nan' is not a finite number"),
        ("PROXY_READ_TIMEOUT", "inf", "'inf' is not a finite number"),
        ("PROXY_READ_TIMEOUT", "1e999", "'1e999' is not a finite number"),
        ("PROXY_UPSTREAM_KEEPALIVE_TIMEOUT", "0", "'0' must be > 0"),
        ("PROXY_UPSTREAM_KEEPALIVE_TIMEOUT", "-2", "'-2' must be > 0"),
        ("PROXY_UPSTREAM_KEEPALIVE_TIMEOUT", "inf", "'inf' is not a finite number"),
        ("PROXY_HOST", "", "'' must not be empty"),
        ("PROXY_MODEL_NAME", " ", "' ' must not be empty"),
        ("PROXY_ENGINE_LABEL", "", "'' must not be empty"),
        ("PROXY_LOG_LEVEL", "verbose", "'verbose' must be one of DEBUG, INFO, WARNING"),
        ("PROXY_STREAM_USAGE", "always", "'always' must be one of none, include, continuous"),
        ("PROXY_LOG_FORMAT", "xml", "'xml' must be one of text, json"),
        ("PROXY_DISABLE_METRICS_ENDPOINT", "maybe", "'maybe' is not a boolean"),
        ("PROXY_DISABLE_METRICS_ENDPOINT", "", "'' is not a boolean"),
        ("PROXY_UPSTREAM_URL", "localhost:8001", "'localhost:8001' must start with http://"),
        ("PROXY_UPSTREAM_URL", "ftp://h", "'ftp://h' must start with http:// or https://"),
        ("PROXY_UPSTREAM_URL", "http://", "'http://' has no host"),
        ("PROXY_UPSTREAM_URL", "http://:8001/x", "'http://:8001/x' has no host"),
        ("PROXY_UPSTREAM_URL", "http://h:99999", "'http://h:99999' has an invalid port"),
        ("PROXY_UPSTREAM_URL", "http://h/?a=1", "'http://h/?a=1' must not have a query"),
        ("PROXY_UPSTREAM_URL", "http://h/#top", "'http://h/#top' must not have a query"),
        ("PROXY_UPSTREAM_URL", "http://h o:8001", "'http://h o:8001' has an invalid host"),
        ("PROXY_UPSTREAM_URL", "http://h\x01:1", "'http://h\\x01:1' has a control character"),
        ("PROXY_MODEL_NAME", "a\nb", "'a\\nb' has a control character"),
        ("PROXY_MODEL_NAME", "\udcff", "'\\udcff' is not valid UTF-8"),
        ("PROXY_ENGINE_LABEL", "e\t1", "'e\\t1' has a control character"),
        ("PROXY_HOST", "\udcff", "'\\udcff' is not valid UTF-8"),
        ("PROXY_API_KEY", "k\udcff", "(hidden) is not valid UTF-8"),
        ("PROXY_ADMIN_TOKEN", "t\n", "(hidden) has a control character"),
    ],
)
def test_invalid_env_values(env: str, value: str, expected: str) -> None:
    message = error_for({env: value})
    setting = next(s for s in SETTINGS if s.env == env)
    assert message.startswith(f"invalid value for {setting.flag} ({env}): {expected}")


def test_invalid_flag_value_is_reported_as_given() -> None:
    message = error_for({}, read_timeout="-1")
    assert message == "invalid value for --read-timeout (PROXY_READ_TIMEOUT): '-1' must be >= 0"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"port": True}, "True is not an integer"),
        ({"port": 8000.0}, "8000.0 is not an integer"),
        ({"read_timeout": False}, "False is not a number"),
        ({"disable_metrics_endpoint": 1}, "1 is not a boolean"),
        ({"host": 1}, "1 is not a string"),
    ],
)
def test_typed_overrides_must_have_the_right_type(
    overrides: dict[str, object], expected: str
) -> None:
    assert error_for({}, **overrides).endswith(expected)


def test_direct_construction_is_validated_and_normalized() -> None:
    config = Config(upstream_url="http://h:1/", model_name="m", log_level="debug", read_timeout=5)
    assert (config.upstream_url, config.log_level) == ("http://h:1", "DEBUG")
    assert isinstance(config.read_timeout, float)
    with pytest.raises(ConfigError, match=r"--port \(PROXY_PORT\): 70000 must be between"):
        Config(upstream_url="http://h", model_name="m", port=70000)


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Yes", "on", " on "])
def test_bool_true_words(word: str) -> None:
    assert from_env(PROXY_DISABLE_METRICS_ENDPOINT=word).disable_metrics_endpoint is True


@pytest.mark.parametrize("word", ["false", "False", "0", "no", "NO", "off"])
def test_bool_false_words(word: str) -> None:
    assert from_env(PROXY_DISABLE_METRICS_ENDPOINT=word).disable_metrics_endpoint is False


@pytest.mark.parametrize(
    ("given", "stored"),
    [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"), ("error", "ERROR")],
)
def test_log_level_any_case_stored_upper(given: str, stored: str) -> None:
    assert from_env(PROXY_LOG_LEVEL=given).log_level == stored


def test_stream_usage_choices() -> None:
    for choice in ("none", "include", "continuous"):
        assert from_env(PROXY_STREAM_USAGE=choice).stream_usage == choice
    assert from_env(PROXY_STREAM_USAGE="Continuous").stream_usage == "continuous"


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("http://h:8001/", "http://h:8001"),
        ("http://h:8001//", "http://h:8001"),
        ("https://h", "https://h"),
        ("http://h:8001/prefix/", "http://h:8001/prefix"),
        ("http://user:pw@h:8001/prefix", "http://user:pw@h:8001/prefix"),
        ("http://v1", "http://v1"),
        ("http://[::1]:8001", "http://[::1]:8001"),
    ],
)
def test_upstream_url_keeps_prefix_and_drops_trailing_slash(given: str, stored: str) -> None:
    # Credentials in the URL are lent to clients, which must be allowed explicitly.
    config = from_env(PROXY_UPSTREAM_URL=given, PROXY_ALLOW_UNAUTHENTICATED="true")
    assert config.upstream_url == stored


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("http://h:8001/v1", "http://h:8001"),
        ("http://h:8001/v1/", "http://h:8001"),
        ("https://h/prefix/v1", "https://h/prefix"),
        ("http://h/v1/v1", "http://h"),
        ("http://user:SECRET@h/v1", "http://user:SECRET@h"),
    ],
)
def test_a_trailing_v1_in_the_upstream_url_is_dropped_with_a_warning(
    given: str, stored: str
) -> None:
    with pytest.warns(SettingCorrected, match="ends in /v1") as caught:
        config = from_env(PROXY_UPSTREAM_URL=given, PROXY_ALLOW_UNAUTHENTICATED="1")
    assert config.upstream_url == stored
    assert len(caught) == 1  # once, however many times the value is checked
    assert "SECRET" not in str(caught[0].message)


def test_zero_means_no_limit_where_allowed() -> None:
    config = from_env(
        PROXY_PORT="0",
        PROXY_MAX_CONCURRENCY="0",
        PROXY_CONNECT_TIMEOUT="0",
        PROXY_READ_TIMEOUT="0",
        PROXY_WRITE_TIMEOUT="0",
        PROXY_REQUEST_TIMEOUT="0",
    )
    assert (config.port, config.max_concurrency) == (0, 0)
    assert config.read_timeout == 0.0


def test_seconds_or_none() -> None:
    assert seconds_or_none(0.0) is None
    assert seconds_or_none(0) is None
    assert seconds_or_none(2.5) == 2.5
    assert seconds_or_none(from_env().request_timeout) is None
    assert seconds_or_none(from_env().read_timeout) == 600.0


def test_settings_describe_flag_env_and_default() -> None:
    port = next(s for s in SETTINGS if s.name == "port")
    assert (port.flag, port.env, port.kind, port.default, port.required) == (
        "--port",
        "PROXY_PORT",
        int,
        8000,
        False,
    )
    url = SETTINGS[0]
    assert (url.flag, url.env, url.kind, url.required) == (
        "--upstream-url",
        "PROXY_UPSTREAM_URL",
        str,
        True,
    )
    assert url.default is dataclasses.MISSING


def test_simulate_stands_in_for_the_upstream_url() -> None:
    for given in ({"PROXY_SIMULATE": "true"}, {}):
        flags = {} if given else {"simulate": True}
        config = Config.from_env({"PROXY_MODEL_NAME": "m", **given}, **flags)
        assert (config.simulate, config.upstream_url) == (True, SIMULATED_UPSTREAM)
    options = {"PROXY_SIMULATE": "1", "PROXY_SIMULATE_OPTIONS": "--traffic 2"}
    assert Config.from_env({"PROXY_MODEL_NAME": "m", **options}).simulate_options == "--traffic 2"


def test_without_simulate_a_missing_upstream_still_stops() -> None:
    with pytest.raises(ConfigError, match=r"missing required setting --upstream-url"):
        Config.from_env({"PROXY_MODEL_NAME": "m", "PROXY_SIMULATE": "false"})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"PROXY_SIMULATE": "true"},
            "--simulate (PROXY_SIMULATE) serves a simulated upstream, but --upstream-url "
            "(PROXY_UPSTREAM_URL) names a real one: give one or the other",
        ),
        (
            {"PROXY_SIMULATE_OPTIONS": "--ttft 1"},
            "--simulate-options (PROXY_SIMULATE_OPTIONS) is set but --simulate "
            "(PROXY_SIMULATE) is not",
        ),
        (
            {"PROXY_SIMULATE": "maybe"},
            "invalid value for --simulate (PROXY_SIMULATE): 'maybe' is not a boolean (use "
            "true/false, 1/0, yes/no or on/off)",
        ),
    ],
)
def test_simulate_is_never_mixed_up_with_a_real_upstream(
    env: dict[str, str], expected: str
) -> None:
    assert error_for(env) == expected


# --- Attribution -------------------------------------------------------------------------------

SALT = "s" * 16


def test_attribution_is_off_by_default() -> None:
    config = from_env()
    assert not config.attribution
    assert (config.tenant_header, config.tenant_limit, config.tenant_max_share) == ("", 100, 1.0)
    assert from_env(PROXY_TENANT_HEADER="X-Tenant").attribution
    keyed = from_env(PROXY_TENANT_FROM_API_KEY="true", PROXY_TENANT_SALT=SALT)
    assert keyed.attribution
    assert SALT not in repr(keyed)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"PROXY_TENANT_FROM_API_KEY": "1"},
            "--tenant-from-api-key (PROXY_TENANT_FROM_API_KEY) needs PROXY_TENANT_SALT in the "
            "environment",
        ),
        (
            {"PROXY_TENANT_FROM_API_KEY": "1", "PROXY_TENANT_SALT": "s3cret-short"},
            "invalid value for PROXY_TENANT_SALT: (hidden) is shorter than 16 characters",
        ),
        (
            {"PROXY_TENANT_SALT": ""},
            "invalid value for PROXY_TENANT_SALT: it is empty",
        ),
        (
            {"PROXY_TENANT_HEADER": "Authorization"},
            "invalid value for --tenant-header (PROXY_TENANT_HEADER): 'Authorization' carries "
            "credentials",
        ),
        (
            {"PROXY_TENANT_HEADER": "x-api-key"},
            "'x-api-key' carries credentials",
        ),
        ({"PROXY_TENANT_HEADER": "X Tenant"}, "'X Tenant' is not an HTTP header name"),
        ({"PROXY_TENANT_LIMIT": "0"}, "'0' must be >= 1"),
        ({"PROXY_TENANT_MAX_SHARE": "0"}, "'0' must be above 0 and at most 1"),
        ({"PROXY_TENANT_MAX_SHARE": "1.5"}, "'1.5' must be above 0 and at most 1"),
        (
            {"PROXY_TENANT_MAX_SHARE": "0.5", "PROXY_TENANT_HEADER": "X-Tenant"},
            "--tenant-max-share (PROXY_TENANT_MAX_SHARE) shares --max-concurrency's slots",
        ),
        (
            {"PROXY_TENANT_MAX_SHARE": "0.5", "PROXY_MAX_CONCURRENCY": "4"},
            "it needs --max-concurrency and --tenant-header or --tenant-from-api-key",
        ),
    ],
)
def test_attribution_settings_that_cannot_work(env: dict[str, str], expected: str) -> None:
    message = error_for(env)
    assert expected in message
    assert "s3cret" not in message


def test_the_salt_has_no_flag() -> None:
    salt = next(s for s in SETTINGS if s.env == "PROXY_TENANT_SALT")
    assert salt.env_only
    assert salt.secret
    share = from_env(
        PROXY_TENANT_HEADER="X-Tenant", PROXY_MAX_CONCURRENCY="4", PROXY_TENANT_MAX_SHARE="0.5"
    )
    assert share.tenant_max_share == 0.5
