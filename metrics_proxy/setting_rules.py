"""Casting settings from text and checking them: small pure helpers for config.py."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


# --- Parsing text from the environment or the command line -------------------------------------


# What Kubernetes puts in <SERVICE>_PORT for every Service in the namespace: a Service named
# "proxy" would hand the proxy PROXY_PORT=tcp://10.0.0.7:8000.
_SERVICE_LINK = re.compile(r"(tcp|udp|sctp)://", re.IGNORECASE)


def parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        if _SERVICE_LINK.match(raw.strip()):
            raise ValueError(
                "is not an integer: it looks like the address Kubernetes sets for a Service "
                "named after this variable; set enableServiceLinks: false in the pod spec"
            ) from None
        raise ValueError("is not an integer") from None


def parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("is not a number") from None


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError("is not a boolean (use true/false, 1/0, yes/no or on/off)")


PARSERS: dict[type, Callable[[str], object]] = {
    str: str,
    int: parse_int,
    float: parse_float,
    bool: parse_bool,
}


KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def check_type(kind: type, value: object) -> object:
    # bool is an int subclass: True must not pass as a port, nor 1 as a flag.
    if isinstance(value, kind) and isinstance(value, bool) == (kind is bool):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"is not {KIND_NAMES[kind]}")


# --- Rules: each returns the normalized value or raises ValueError(reason) ---------------------


def identity(value: Any) -> Any:
    return value


def text(value: str) -> str:
    """Text that can go into a header, a metric label and a log line: valid UTF-8 (an
    environment variable may hold any bytes), and no control character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8") from None
    if _CONTROL.search(value):
        raise ValueError("has a control character")
    return value


def not_blank(value: str) -> str:
    if not text(value).strip():
        raise ValueError("must not be empty")
    return value


def at_least(low: float) -> Callable[[Any], Any]:
    def rule(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        if value < low:
            raise ValueError(f"must be >= {low:g}")
        return value

    return rule


def above(low: float) -> Callable[[Any], Any]:
    def rule(value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        if value <= low:
            raise ValueError(f"must be > {low:g}")
        return value

    return rule


def between(low: int, high: int) -> Callable[[Any], Any]:
    def rule(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return rule


def one_of(choices: tuple[str, ...]) -> Callable[[Any], Any]:
    # Case-insensitive, stored in the spelling of the choices (upper for log levels).
    by_key = {choice.casefold(): choice for choice in choices}

    def rule(value: str) -> str:
        try:
            return by_key[value.casefold()]
        except KeyError:
            raise ValueError(f"must be one of {', '.join(choices)}") from None

    return rule


def share(value: float) -> float:
    """A fraction of a whole: above 0, at most 1."""
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError("must be above 0 and at most 1")
    return value


def at_least_chars(length: int) -> Callable[[Any], Any]:
    """Text that is empty (unset) or at least ``length`` characters long: a secret key."""

    def rule(value: str) -> str:
        if value and len(text(value)) < length:
            raise ValueError(f"is shorter than {length} characters")
        return value

    return rule


# An HTTP field name (RFC 9110 token); the ones that carry credentials are refused, or a
# key could become a label value.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})


def header_name(value: str) -> str:
    """Empty (unset), or the name of a request header that carries no credentials."""
    if not value:
        return value
    if not _TOKEN.fullmatch(value):
        raise ValueError("is not an HTTP header name")
    if value.lower() in _CREDENTIAL_HEADERS:
        raise ValueError("carries credentials, which must never become a label")
    return value


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without ``user:password@``, and the ``Authorization`` value those ask for
    (HTTP Basic), or None when it has none."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    host = parts.netloc.rpartition("@")[2]
    credentials = base64.b64encode(userinfo.encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), f"Basic {credentials}"


def http_url(value: str) -> str:
    url = text(value).rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a broken IPv6 literal, say
        raise ValueError(f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if any(char.isspace() for char in parts.hostname):
        raise ValueError("has an invalid host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("has an invalid port") from None
    if "?" in url or "#" in url:
        # Request paths are appended to this URL; a query or fragment would swallow them.
        raise ValueError("must not have a query or a fragment")
    return url


def mask_url(url: str) -> str:
    """``url`` with its password (or a lone user name, often a token) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a broken IPv6 literal: show nothing that might be a password
        return "***" if "@" in url else url
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    userinfo = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))
