"""The proxy's settings: one table drives the environment, the CLI and validation."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from metrics_proxy.auth import split_tokens
from metrics_proxy.setting_rules import (
    PARSERS,
    above,
    at_least,
    at_least_chars,
    between,
    check_type,
    header_name,
    http_url,
    identity,
    mask_url,
    not_blank,
    one_of,
    share,
    text,
)

__all__ = [
    "ENV_PREFIX",
    "SETTINGS",
    "SIMULATED_UPSTREAM",
    "Config",
    "ConfigError",
    "LogFormat",
    "Setting",
    "SettingCorrected",
    "StreamUsage",
    "seconds_or_none",
]

ENV_PREFIX = "PROXY_"

StreamUsage = Literal["none", "include", "continuous"]
LogFormat = Literal["text", "json"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_STREAM_USAGES = ("none", "include", "continuous")
_LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting is missing or has a value the proxy cannot use.

    The message names the setting by its flag and its environment variable, and quotes the value.
    """

    def __init__(self, message: str, *, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class SettingCorrected(UserWarning):
    """A setting's value was changed into the one it obviously meant; the command logs it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything the proxy needs to run; validated and normalized on construction.

    Build it with :meth:`from_env`, which applies the precedence flag > env > default:

    >>> Config.from_env({"PROXY_MODEL_NAME": "m"}, upstream_url="http://127.0.0.1:8001/").port
    8000
    """

    # Not in the repr: it may carry credentials (http://user:password@host).
    upstream_url: str = field(repr=False)
    model_name: str  # "auto": each request's model, among those the upstream lists
    model_refresh_interval: float = 30.0
    host: str = "0.0.0.0"
    port: int = 8000
    engine_label: str = "proxy"
    max_concurrency: int = 0
    max_model_len: int = 8192
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    write_timeout: float = 60.0
    request_timeout: float = 0.0
    client_write_timeout: float = 60.0
    upstream_keepalive_timeout: float = 4.0
    disable_metrics_endpoint: bool = False
    engine_metrics: bool = False
    engine_metrics_url: str = field(default="", repr=False)  # may carry credentials too
    engine_metrics_timeout: float = 2.0
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    stream_usage: StreamUsage = "include"
    max_body_size: int = 32 * 1024 * 1024
    max_queue_length: int = 0
    max_queue_wait: float = 0.0
    client_timeout: float = 60.0
    shutdown_grace_period: float = 30.0
    upstream_ca_bundle: str = ""
    upstream_insecure: bool = False
    # Secrets: never in a repr, so never in a log line or a test failure message.
    upstream_api_key: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    allow_unauthenticated: bool = False
    allow_admin_routes: bool = False
    # Attribution: who sent each request, as a label of the proxy's tenant series.
    tenant_header: str = ""
    tenant_from_api_key: bool = False
    # Keys the HMAC of bearer tokens; from the environment only (a flag shows in ps).
    tenant_salt: str = field(default="", repr=False)
    tenant_limit: int = 100
    tenant_max_share: float = 1.0
    # A demo with no GPU: the built-in simulated vLLM instead of an upstream (see from_env).
    simulate: bool = False
    simulate_options: str = ""

    def __post_init__(self) -> None:
        # Direct construction gets the same checks as the CLI, so no invalid Config exists.
        for setting in SETTINGS:
            normalized = setting.coerce(getattr(self, setting.name))
            # Frozen: normalizing (e.g. stripping the URL's "/") must bypass the dataclass guard.
            object.__setattr__(self, setting.name, normalized)
        if self.api_key and not split_tokens(self.api_key):
            raise ConfigError(
                "invalid value for --api-key (PROXY_API_KEY): it holds no key", setting="api_key"
            )
        lends_credentials = self.upstream_api_key or urlsplit(self.upstream_url).username
        if lends_credentials and not self.api_key and not self.allow_unauthenticated:
            # Otherwise every client that reaches the proxy borrows the upstream key's powers.
            raise ConfigError(
                "--upstream-api-key (PROXY_UPSTREAM_API_KEY) or credentials in --upstream-url "
                "are set but --api-key (PROXY_API_KEY) is not: any client could use the "
                "upstream's key; set an --api-key for clients, or --allow-unauthenticated to "
                "accept that",
                setting="api_key",
            )
        _check_attribution(self)

    @property
    def attribution(self) -> bool:
        """Whether requests are attributed to tenants (--tenant-header, --tenant-from-api-key)."""
        return bool(self.tenant_header) or self.tenant_from_api_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: object) -> Config:
        """Build a Config from ``PROXY_*`` variables in ``environ``, beaten by ``overrides``.

        Overrides are the command line's values, as text or already typed; ``None`` means
        "not given". Only the winning value of each setting is parsed and checked, so a stale,
        bad environment variable that a flag overrides does not stop the proxy.
        """
        unknown = overrides.keys() - {s.name for s in SETTINGS}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        # Only an explicit --simulate stands in for the upstream: a deployment that lost
        # its PROXY_UPSTREAM_URL still stops, it never serves simulated answers.
        simulating = bool(_SIMULATE.coerce(_given(_SIMULATE, environ, overrides) or False))
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = _given(setting, environ, overrides)
            if raw is None:
                if setting.required and not (simulating and setting is _UPSTREAM):
                    raise ConfigError(
                        f"missing required setting {setting.flag} ({setting.env})",
                        setting=setting.name,
                    )
                continue
            if setting.secret and isinstance(raw, str) and not raw.strip():
                # An empty secret would read as "off" and open what it was meant to close.
                raise ConfigError(
                    f"invalid value for {setting.spelled}: it is empty; unset it to turn it off",
                    setting=setting.name,
                )
            values[setting.name] = setting.coerce(raw)
        return cls(**_with_simulation(values))


# --simulate's upstream URL until the simulator listens: serve() puts its real address there.
SIMULATED_UPSTREAM = "http://127.0.0.1:0"


def _given(setting: Setting, environ: Mapping[str, str], overrides: Mapping[str, object]) -> object:
    """A setting's raw value: the flag's, else the environment's, else None."""
    raw = overrides.get(setting.name)
    return environ.get(setting.env) if raw is None else raw


def _with_simulation(values: dict[str, Any]) -> dict[str, Any]:
    """--simulate's upstream in ``values``, or the mistake of mixing it up with a real one."""
    if not values.get("simulate"):
        if values.get("simulate_options"):
            raise ConfigError(
                "--simulate-options (PROXY_SIMULATE_OPTIONS) is set but --simulate "
                "(PROXY_SIMULATE) is not",
                setting="simulate_options",
            )
        return values
    if "upstream_url" in values:
        raise ConfigError(
            "--simulate (PROXY_SIMULATE) serves a simulated upstream, but --upstream-url "
            "(PROXY_UPSTREAM_URL) names a real one: give one or the other",
            setting="simulate",
        )
    return values | {"upstream_url": SIMULATED_UPSTREAM}


def _check_attribution(config: Config) -> None:
    """The attribution settings that make no sense together, each refused in one line."""
    if config.tenant_from_api_key and not config.tenant_salt:
        raise ConfigError(
            "--tenant-from-api-key (PROXY_TENANT_FROM_API_KEY) needs PROXY_TENANT_SALT in the "
            "environment: a secret of at least 16 characters, the same on every replica",
            setting="tenant_salt",
        )
    if config.tenant_max_share < 1 and not (config.attribution and config.max_concurrency):
        raise ConfigError(
            "--tenant-max-share (PROXY_TENANT_MAX_SHARE) shares --max-concurrency's slots "
            "among tenants: it needs --max-concurrency and --tenant-header or "
            "--tenant-from-api-key",
            setting="tenant_max_share",
        )


def seconds_or_none(seconds: float) -> float | None:
    """Map a timeout setting to aiohttp's spelling: 0 means no limit, which aiohttp calls None."""
    return None if seconds == 0 else seconds


# --- The table ---------------------------------------------------------------------------------


def _kind(hint: object) -> type:
    # A Literal of strings (StreamUsage) is parsed as text and narrowed by its rule.
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0])
    if not isinstance(hint, type):
        raise TypeError(f"unsupported setting type {hint!r}")
    return hint


_SECRETS = frozenset({"upstream_api_key", "admin_token", "api_key", "tenant_salt"})
# Read from the environment alone: no flag, so never on a command line (ps shows those).
_ENV_ONLY = frozenset({"tenant_salt"})
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}
_KINDS = {name: _kind(hint) for name, hint in get_type_hints(Config).items()}


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its Config field, how the CLI and environment spell it, and its rule.

    Its type and default are read from the Config field of the same name: one place for each.
    """

    name: str
    metavar: str | None
    help: str
    rule: Callable[[Any], Any] = identity

    @property
    def secret(self) -> bool:
        """A key or token: never shown, and never given empty."""
        return self.name in _SECRETS

    @property
    def env_only(self) -> bool:
        """Set in the environment only: the command line has no flag for it."""
        return self.name in _ENV_ONLY

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def spelled(self) -> str:
        """How a message names it: flag and variable, or the variable alone."""
        return self.env if self.env_only else f"{self.flag} ({self.env})"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def kind(self) -> type:
        """The value's type: str, int, float or bool."""
        return _KINDS[self.name]

    @property
    def required(self) -> bool:
        return _FIELDS[self.name].default is dataclasses.MISSING

    @property
    def default(self) -> object:
        """The default value; ``dataclasses.MISSING`` when the setting is required."""
        return _FIELDS[self.name].default

    def coerce(self, raw: object) -> object:
        """Parse ``raw`` (text, or an already typed value) and apply the rule, or raise."""
        try:
            value = PARSERS[self.kind](raw) if isinstance(raw, str) else raw
            return self.rule(check_type(self.kind, value))
        except ValueError as exc:
            raise ConfigError(
                f"invalid value for {self.spelled}: {self._shown(raw)} {exc}",
                setting=self.name,
            ) from None

    def _shown(self, raw: object) -> str:
        """A bad value as an error message may quote it: never a secret, nor a password."""
        if self.secret:
            return "(hidden)"
        return repr(mask_url(raw) if isinstance(raw, str) else raw)


def _upstream_root(value: str) -> str:
    """The upstream's base URL, without the ``/v1`` an OpenAI SDK's base URL ends in: every
    request's path starts with it already, and /v1/v1/chat/completions is a 404."""
    url = http_url(value)
    path = root_path = urlsplit(url).path  # the URL's end: it has no query or fragment
    while root_path.endswith("/v1"):
        root_path = root_path.removesuffix("/v1")
    root = url[: len(url) - len(path) + len(root_path)]
    if root != url:
        warnings.warn(
            SettingCorrected(
                f"--upstream-url (PROXY_UPSTREAM_URL) {mask_url(url)!r} ends in /v1, which "
                f"every request's path starts with already: using {mask_url(root)!r}"
            ),
            stacklevel=2,
        )
    return root


def _optional_url(value: str) -> str:
    """An http(s) URL, or empty for none."""
    return http_url(value) if value.strip() else ""


_TIMEOUT = at_least(0)
_NO_LIMIT = "; 0 = no limit"

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "upstream_url",
        "URL",
        "base URL of the upstream, e.g. http://127.0.0.1:8001; a path prefix is kept, a "
        "trailing /v1 is not; required unless --simulate",
        _upstream_root,
    ),
    Setting(
        "model_name",
        "NAME",
        "model name for the metrics' model_name label; auto: the model each request asks for, "
        'among those the upstream lists in /v1/models (any other counts as "other")',
        not_blank,
    ),
    Setting(
        "model_refresh_interval",
        "SECONDS",
        "with --model-name auto, how often the upstream's /v1/models is read again",
        at_least(0.01),
    ),
    Setting("host", "HOST", "interface to listen on", not_blank),
    Setting("port", "PORT", "port to listen on; 0 picks a free one", between(0, 65535)),
    Setting("engine_label", "LABEL", "value of the metrics' engine label", not_blank),
    Setting("max_concurrency", "N", "most requests upstream at once" + _NO_LIMIT, at_least(0)),
    Setting(
        "max_model_len",
        "TOKENS",
        "the upstream's context length in tokens; sizes the token histograms",
        at_least(1),
    ),
    Setting("connect_timeout", "SECONDS", "time to connect to the upstream" + _NO_LIMIT, _TIMEOUT),
    Setting(
        "read_timeout",
        "SECONDS",
        "longest silence allowed between upstream bytes" + _NO_LIMIT,
        _TIMEOUT,
    ),
    Setting("write_timeout", "SECONDS", "time to send a request upstream" + _NO_LIMIT, _TIMEOUT),
    Setting(
        "request_timeout",
        "SECONDS",
        "time for a whole exchange, streaming and writes to the client included" + _NO_LIMIT,
        _TIMEOUT,
    ),
    Setting(
        "client_write_timeout",
        "SECONDS",
        "longest a write to a client may wait for it to read; then the connection is cut"
        + _NO_LIMIT,
        _TIMEOUT,
    ),
    Setting(
        "upstream_keepalive_timeout",
        "SECONDS",
        "how long an idle upstream connection is kept for reuse; keep it below the upstream's "
        "own keep-alive timeout (vLLM's: 5)",
        above(0),
    ),
    Setting(
        "disable_metrics_endpoint",
        None,
        "do not serve /metrics; the environment variable takes true/false, 1/0, yes/no, on/off",
    ),
    Setting(
        "engine_metrics",
        None,
        "each scrape of /metrics also reads the upstream's /metrics (a sidecar's engine) and "
        "adds the series only the engine knows (KV cache, preemptions, prefix cache, ...)",
    ),
    Setting(
        "engine_metrics_url",
        "URL",
        "as --engine-metrics, reading the engine's /metrics at this URL: one engine's own "
        "address, never a Service's that spreads requests over several",
        _optional_url,
    ),
    Setting(
        "engine_metrics_timeout",
        "SECONDS",
        "longest a scrape of /metrics waits for the engine's; keep it well under "
        "Prometheus's scrape_timeout",
        above(0),
    ),
    Setting(
        "log_level", "LEVEL", "log level, any case: " + ", ".join(_LOG_LEVELS), one_of(_LOG_LEVELS)
    ),
    Setting(
        "log_format",
        "{" + ",".join(_LOG_FORMATS) + "}",
        "how log lines are written: text, or one JSON object per line (json)",
        one_of(_LOG_FORMATS),
    ),
    Setting(
        "stream_usage",
        "{" + ",".join(_STREAM_USAGES) + "}",
        "what a streaming upstream is asked for so token counts are exact: nothing (none), "
        "one usage chunk at the end (include) or usage in every chunk (continuous)",
        one_of(_STREAM_USAGES),
    ),
    Setting(
        "max_body_size", "BYTES", "largest request body in bytes; larger ones get 413", at_least(1)
    ),
    Setting(
        "max_queue_length",
        "N",
        "most requests waiting in the proxy's queue; more are refused with 429" + _NO_LIMIT,
        at_least(0),
    ),
    Setting(
        "max_queue_wait",
        "SECONDS",
        "longest wait in the proxy's queue; past it the request gets 503" + _NO_LIMIT,
        _TIMEOUT,
    ),
    Setting(
        "client_timeout",
        "SECONDS",
        "time a client gets to send a completion request body, and the longest pause in a "
        "forwarded one; slower ones get 408" + _NO_LIMIT,
        _TIMEOUT,
    ),
    Setting(
        "shutdown_grace_period",
        "SECONDS",
        "on SIGTERM or a first Ctrl-C, time in-flight requests get to finish before they are ended",
        _TIMEOUT,
    ),
    Setting("upstream_ca_bundle", "FILE", "PEM file of CAs to trust for an https upstream"),
    Setting(
        "upstream_insecure",
        None,
        "do not verify the upstream's TLS certificate (a warning is logged at start)",
    ),
    Setting(
        "upstream_api_key",
        "KEY",
        "sent to the upstream as 'Authorization: Bearer KEY' (vLLM's --api-key); never logged",
        text,
    ),
    Setting(
        "admin_token",
        "TOKEN",
        "when set, /metrics, /internal/metrics and any upstream /metrics... path need "
        "'Authorization: Bearer TOKEN'",
        text,
    ),
    Setting(
        "api_key",
        "KEYS",
        "when set, every request but vLLM's public paths (/health, /ping, /load, /version, "
        "docs) needs 'Authorization: Bearer KEY' (vLLM's --api-key); several keys separated "
        "by commas; never logged",
        text,
    ),
    Setting(
        "allow_unauthenticated",
        None,
        "start with --upstream-api-key but no --api-key, lending the upstream key to any client",
    ),
    Setting(
        "allow_admin_routes",
        None,
        "forward vLLM's administrative routes (LoRA loading, sleep, cache resets, profiling, "
        "weight updates, ...), which are refused with 403 otherwise",
    ),
    Setting(
        "tenant_header",
        "NAME",
        "attribute each request to the tenant this request header names (e.g. X-Tenant), in "
        "the proxy_tenant_* series and the log; trust it only when a gateway in front sets it",
        header_name,
    ),
    Setting(
        "tenant_from_api_key",
        None,
        "attribute each request to its bearer token's keyed hash (HMAC-SHA256 under "
        "PROXY_TENANT_SALT, cut to 12 hex digits; never the token); after --tenant-header",
    ),
    Setting(
        "tenant_salt",
        None,
        "the secret key of --tenant-from-api-key's hash, at least 16 characters, the same on "
        "every replica; environment only",
        at_least_chars(16),
    ),
    Setting(
        "tenant_limit",
        "N",
        'most tenants with series of their own; later ones are counted as tenant="other"',
        at_least(1),
    ),
    Setting(
        "tenant_max_share",
        "FRACTION",
        "with --max-concurrency, the largest share of its slots one tenant may hold while "
        "another tenant waits (0 < FRACTION <= 1; 1 = no cap)",
        share,
    ),
    Setting(
        "simulate",
        None,
        "no upstream: serve from a built-in simulated vLLM on a loopback port of its own, to "
        "try the proxy without a GPU; its answers are made up (said at WARNING); not with "
        "--upstream-url",
    ),
    Setting(
        "simulate_options",
        "OPTIONS",
        "with --simulate, the simulator's knobs as 'python -m metrics_proxy.simulate' takes "
        "them: --ttft, --itl, --output-tokens, --spread, --error-rate, --seed, and --traffic "
        "RPS to send requests through the proxy",
    ),
)
_UPSTREAM, _SIMULATE = SETTINGS[0], next(s for s in SETTINGS if s.name == "simulate")
