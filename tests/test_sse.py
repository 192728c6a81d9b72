"""Tests for metrics_proxy.sse: the event-stream decoder."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from metrics_proxy.sse import Event, SSEDecoder
from tests.support.vllm_chunks import PAYLOADS

LF_STREAM = b"".join(b"data: " + payload + b"\n\n" for payload in PAYLOADS)
STREAMS = {
    "lf": LF_STREAM,
    "crlf": LF_STREAM.replace(b"\n", b"\r\n"),
    "cr": LF_STREAM.replace(b"\n", b"\r"),
    "pings": b": ping\n\n" + LF_STREAM.replace(b"\n\ndata", b"\n\n: ping\n\ndata"),
}
BLANK_LINE = {"lf": b"\n\n", "crlf": b"\r\n\r\n", "cr": b"\r\r", "pings": b"\n\n"}


def decode(pieces: Iterable[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    events += decoder.flush()
    assert not decoder.pending
    return events


def check(events: list[Event], name: str) -> None:
    stream = STREAMS[name]
    assert [event.data for event in events] == PAYLOADS
    for event in events:
        assert stream[: event.end].endswith(BLANK_LINE[name])
        assert stream[: event.end].rstrip(b"\r\n").endswith(b"data: " + event.data)
    assert events[-1].end == len(stream)


@pytest.mark.parametrize("name", STREAMS)
def test_whole_stream(name: str) -> None:
    check(decode([STREAMS[name]]), name)


@pytest.mark.parametrize("name", STREAMS)
def test_cut_at_every_offset(name: str) -> None:
    stream = STREAMS[name]
    expected = decode([stream])
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == expected, cut


@pytest.mark.parametrize("name", STREAMS)
def test_one_byte_at_a_time(name: str) -> None:
    stream = STREAMS[name]
    check(decode(stream[i : i + 1] for i in range(len(stream))), name)


def test_lf_events_come_out_without_flush() -> None:
    decoder = SSEDecoder()
    assert [event.data for event in decoder.feed(LF_STREAM)] == PAYLOADS
    assert not decoder.pending
    assert decoder.flush() == []


def test_event_per_chunk_offsets() -> None:
    decoder = SSEDecoder()
    ends = []
    for chunk in LF_STREAM.split(b"\n\n")[:-1]:
        (event,) = decoder.feed(chunk + b"\n\n")
        ends.append(event.end)
    assert ends == [event.end for event in decode([LF_STREAM])]


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == []  # the event waits: is the next byte this CR's LF?
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [Event(b"a", 11), Event(b"b", 22)]


def test_lone_cr_event_resolves_on_next_byte_or_flush() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\r") == []
    assert not decoder.pending
    assert decoder.feed(b"data: b\r\r") == [Event(b"a", 9)]
    assert decoder.flush() == [Event(b"b", 18)]


@pytest.mark.parametrize(
    ("stream", "data"),
    [
        (b"data: a\ndata: b\n\n", [b"a\nb"]),
        (b"data:x\n\ndata:  two\n\n", [b"x", b" two"]),
        (b"data\n\ndata:\n\n", [b"", b""]),
        (b"event: delta\nid: 7\nretry: 10\ndata: x\n\n", [b"x"]),
        (b"event: only\n\n: ping\n\nid: 1\n\n\n\n", []),
        (b"datum: x\ndata-x: y\n\n", []),
        (b":data: x\n\n", []),
        (b"\xef\xbb\xbfdata: bom\n\n", [b"bom"]),
        (b"data: \xef\xbb\xbfkept\n\n", [b"\xef\xbb\xbfkept"]),
    ],
)
def test_fields(stream: bytes, data: list[bytes]) -> None:
    for cut in range(len(stream) + 1):
        assert [event.data for event in decode([stream[:cut], stream[cut:]])] == data


def test_flush_returns_unterminated_event_and_resets() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\ndata: c") == [Event(b"a", 9)]
    assert decoder.pending
    assert decoder.flush() == [Event(b"b\nc", 24)]
    assert not decoder.pending
    assert decoder.feed(b"data: d\n\n") == [Event(b"d", 33)]


def test_long_line_in_many_chunks() -> None:
    payload = b'{"content":"' + b"x" * 100_000 + b'"}'
    stream = b"data: " + payload + b"\r\n\r\n"
    pieces = [stream[i : i + 1000] for i in range(0, len(stream), 1000)]
    assert decode(pieces) == [Event(payload, len(stream))]


def test_pending() -> None:
    decoder = SSEDecoder()
    decoder.feed(b": ping\n")
    assert not decoder.pending
    decoder.feed(b"data: x")
    assert decoder.pending
    decoder.feed(b"\n")
    assert decoder.pending
    decoder.feed(b"\n")
    assert not decoder.pending
    decoder.feed(b"id: 1\n")
    assert decoder.pending
    assert decoder.flush() == []


def test_empty_feed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [Event(b"a", 10)]
