"""Which headers cross the proxy, each way."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from metrics_proxy.headers import request_headers, response_headers


def proxy(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_keeps_end_to_end_headers_and_repeats() -> None:
    out = request_headers(
        proxy(
            [
                ("Authorization", "Bearer x"),
                ("X-Custom", "1"),
                ("X-Custom", "2"),
                ("Host", "proxy:8000"),
                ("Content-Length", "12"),
                ("Connection", "close, X-Private"),
                ("X-Private", "hop"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic y"),
                ("Transfer-Encoding", "chunked"),
                ("Expect", "100-continue"),
            ]
        )
    )
    assert list(out.items()) == [
        ("Authorization", "Bearer x"),
        ("X-Custom", "1"),
        ("X-Custom", "2"),
    ]


def test_response_keeps_length_unless_the_body_is_rewritten() -> None:
    upstream = proxy(
        [
            ("Content-Type", "text/event-stream"),
            ("Content-Length", "100"),
            ("Set-Cookie", "a=1"),
            ("Connection", "keep-alive"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authenticate", "Basic"),
            ("Trailer", "X-Checksum"),
        ]
    )
    kept = [("Content-Type", "text/event-stream"), ("Set-Cookie", "a=1")]
    assert list(response_headers(upstream, body_rewritten=True).items()) == kept
    assert list(response_headers(upstream, body_rewritten=False).items()) == [
        kept[0],
        ("Content-Length", "100"),
        kept[1],
    ]
