"""Which headers cross the proxy: everything end-to-end, nothing hop-by-hop (RFC 9110 §7.6.1)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed by aiohttp for the hop it sends: the upstream's host, the body actually sent.
_REQUEST_RECOMPUTED = frozenset({"host", "content-length"})
# Already answered by the proxy's own server, which sent the 100 and has the body (or streams
# it); passed on, it would make aiohttp hold the body for a 100 the upstream may never send.
_REQUEST_ANSWERED = frozenset({"expect"})


_DROP_REQUEST = HOP_BY_HOP | _REQUEST_RECOMPUTED | _REQUEST_ANSWERED
_DROP_RESPONSE = HOP_BY_HOP
_DROP_REWRITTEN_RESPONSE = HOP_BY_HOP | {"content-length"}


def _end_to_end(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    connection = headers.getall("Connection", ())
    if connection:
        # Headers named in Connection are hop-by-hop for this message too.
        drop = drop.union(
            token.strip().lower() for value in connection for token in value.split(",")
        )
    # A copy less the names to drop that are there (found in C, in any case, and each
    # taken out with every occurrence), where filtering took a Python step per header.
    kept = CIMultiDict(headers)
    for name in headers.keys() & drop:
        kept.popall(name)
    return kept


def request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers as the upstream should get them (Authorization included)."""
    return _end_to_end(headers, _DROP_REQUEST)


def response_headers(headers: CIMultiDictProxy[str], *, body_rewritten: bool) -> CIMultiDict[str]:
    """The upstream's headers as the client should get them. When the proxy may change the
    body (take out the usage it asked for, end a cut stream with an error event), the
    upstream's Content-Length no longer holds: kept, it would desynchronize the connection."""
    return _end_to_end(headers, _DROP_REWRITTEN_RESPONSE if body_rewritten else _DROP_RESPONSE)
