"""Who sent a request: its tenant, read from a header a gateway sets or from the bearer token's
keyed hash; pure, no I/O. A raw token never leaves this module: only its HMAC does."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

from metrics_proxy.families import TENANT_UNKNOWN

__all__ = ["KEY_PREFIX", "KEY_TAG_LENGTH", "MAX_TENANT_LENGTH", "TenantReader", "key_tag"]

# A header value names a tenant when it is visible ASCII (inner spaces allowed) and not long:
# it becomes a label value and a log field. Anything else is no name, never repaired.
MAX_TENANT_LENGTH = 64
_NAME = re.compile(rf"[!-~](?:[ -~]{{0,{MAX_TENANT_LENGTH - 2}}}[!-~])?")
# 12 hex digits (48 bits) of HMAC-SHA256: two of a fleet's keys share one with a chance of
# about 2 in 10^9 for 1000 keys; and the tag, unlike a plain hash, cannot be checked against
# a guessed token by anyone without the salt.
KEY_TAG_LENGTH = 12
# A key's tenant reads "key:3fa2b1c9d0e4", apart from any name a gateway could send.
KEY_PREFIX = "key:"


def key_tag(salt: bytes, token: str) -> str:
    """The tenant of a bearer ``token``: its HMAC-SHA256 under ``salt``, cut short. The same
    on every replica with the same salt; irreversible, and not even testable, without it."""
    # surrogateescape: aiohttp hands over a non-UTF-8 header value with lone surrogates.
    mac = hmac.new(salt, token.encode("utf-8", "surrogateescape"), hashlib.sha256)
    return KEY_PREFIX + mac.hexdigest()[:KEY_TAG_LENGTH]


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` value (scheme in any case), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip(" \t")
    return token if scheme.lower() == "bearer" and token else None


class TenantReader:
    """Reads a request's tenant from its headers: the ``header``'s value when it names one,
    else (with a ``salt``) the bearer token's tag, else TENANT_UNKNOWN. The header comes
    first: a gateway that sets it knows the tenant better than a key does (one tenant may
    hold several keys); a value that starts as a key's tag does (``key:``) is not taken."""

    __slots__ = ("_header", "_keyed")

    def __init__(self, header: str = "", salt: bytes | None = None) -> None:
        if not header and salt is None:
            raise ValueError("a TenantReader needs a header, a salt, or both")
        self._header = header
        # Keyed once: a copy per request skips the key's setup, a third of an HMAC's cost.
        self._keyed = None if salt is None else hmac.new(salt, digestmod=hashlib.sha256)

    def read(self, headers: Mapping[str, str]) -> str:
        if self._header:
            value = headers.get(self._header)
            # A name that reads like a key's tenant is no gateway's: never taken, so a header
            # cannot pose as a key (and use its share of the slots).
            if value is not None and _NAME.fullmatch(value) and not value.startswith(KEY_PREFIX):
                return value
        if self._keyed is not None:
            token = _bearer(headers.get("Authorization"))
            if token is not None:
                mac = self._keyed.copy()
                mac.update(token.encode("utf-8", "surrogateescape"))  # as key_tag does
                return KEY_PREFIX + mac.hexdigest()[:KEY_TAG_LENGTH]
        return TENANT_UNKNOWN
