"""Bearer tokens: parsed as RFC 9110 says, compared in constant time; pure, no I/O."""

from __future__ import annotations

import hashlib
import hmac


def _digest(token: str) -> bytes:
    # surrogateescape: aiohttp hands over a non-UTF-8 header value with lone surrogates,
    # which must compare unequal, never raise.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class BearerTokens:
    """The tokens a route accepts. Comparing fixed-size digests keeps the time spent
    independent of where a guess first differs and of the token's length."""

    __slots__ = ("_digests",)

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = tuple(_digest(token) for token in tokens)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` value carries one of the tokens. The scheme is
        case-insensitive (RFC 9110 §11.1); the token is compared whole."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = _digest(token.strip(" \t"))
        # Every token is compared, so the time does not tell which one matched.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        return matched


def split_tokens(value: str) -> tuple[str, ...]:
    """The comma-separated tokens of a setting (two keys while one is rotated out)."""
    return tuple(token.strip() for token in value.split(",") if token.strip())
