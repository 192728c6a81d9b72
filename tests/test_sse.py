"""Tests for metrics_proxy.sse: the event-stream decoder and the chunk facts."""

from __future__ import annotations

from collections.abc import Iterable

import orjson
import pytest

from metrics_proxy.sse import (
    ChunkFacts,
    Event,
    SSEDecoder,
    Usage,
    chunk_facts,
)

_HEAD = b'{"id":"chatcmpl-5e1f","object":"chat.completion.chunk","created":1732650000,"model":"m",'
# A vLLM chat stream with include_usage, as recorded: role preamble, content, finish, usage.
PAYLOADS = [
    _HEAD + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}',
    _HEAD + b'"choices":[{"index":0,"delta":{"content":"Caf\xc3\xa9"},'
    b'"logprobs":null,"finish_reason":null}]}',
    _HEAD + b'"choices":[{"index":0,"delta":{"content":" \\"ol\\u00e9\\"\\n"},'
    b'"logprobs":null,"finish_reason":null}]}',
    _HEAD + b'"choices":[{"index":0,"delta":{"content":" \xf0\x9f\x98\x80"},'
    b'"logprobs":null,"finish_reason":null}]}',
    _HEAD + b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null}]}',
    _HEAD + b'"choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4}}',
    b"[DONE]",
]
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


def facts(
    outputs: tuple[int, ...] = (),
    finish_reason: str | None = None,
    usage: Usage | None = None,
    usage_only: bool = False,
    error: bool = False,
    usage_key: bool | None = None,
) -> ChunkFacts:
    key = usage is not None if usage_key is None else usage_key
    return ChunkFacts(False, outputs, finish_reason, usage, usage_only, error, key)


def chat(*deltas: object, **extra: object) -> bytes:
    choices = [{"index": i, "delta": d, "finish_reason": None} for i, d in enumerate(deltas)]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (PAYLOADS[0], facts()),
        (PAYLOADS[1], facts((0,))),
        (PAYLOADS[4], facts(finish_reason="stop")),
        (PAYLOADS[5], facts(usage=Usage(12, 4), usage_only=True)),
        (chat({"reasoning_content": "hm"}), facts((0,))),
        (chat({"reasoning": "hm"}), facts((0,))),
        (chat({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}), facts((0,))),
        (chat({"tool_calls": []}, {"content": "x"}), facts((1,))),
        (chat({}, {"content": None}, {"content": 5}), facts()),
        (b'{"choices":[{"delta":{"content":"x"}},{"index":3,"text":"y"}]}', facts((0, 3))),
        (b'{"choices":[{"index":true,"text":"y"},{"index":"2","text":"z"}]}', facts((0, 0))),
        (b'{"object":"text_completion","choices":[{"index":0,"text":"hi"}]}', facts((0,))),
        (b'{"choices":[{"index":0,"text":"","finish_reason":"length"}]}', facts((), "length")),
        (
            b'{"choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason":null}]}',
            facts(finish_reason="stop"),
        ),
        (b'{"choices":[],"usage":{"prompt_tokens":3}}', facts(usage=Usage(3, 0), usage_only=True)),
        (
            chat({"content": "a"}, usage={"prompt_tokens": 3, "completion_tokens": 1}),
            facts((0,), usage=Usage(3, 1)),
        ),
        (b'{"choices":[],"usage":{"prompt_tokens":"3"}}', facts(usage_key=True)),
        (b'{"choices":[],"usage":{"prompt_tokens":-1}}', facts(usage_key=True)),
        (b'{"choices":[],"usage":null}', facts(usage_key=True)),
        (chat({"content": "a"}, usage=None), facts((0,), usage_key=True)),
        (b'{"error":{"message":"boom","code":500}}', facts(error=True)),
        (b'{"choices":{"0":{}}}', facts()),
        (b'{"choices":[1,"x",null,[]]}', facts()),
        (b'{"choices":[{"delta":"hi"},{"delta":["x"]},{"delta":null}]}', facts()),
    ],
)
def test_chunk_facts(payload: bytes, expected: ChunkFacts) -> None:
    assert chunk_facts(payload) == expected


@pytest.mark.parametrize("payload", [b"[DONE]", b" [DONE]\n", b"\t[DONE]"])
def test_chunk_facts_done(payload: bytes) -> None:
    result = chunk_facts(payload)
    assert result is not None
    assert result.done
    assert result.outputs == ()


@pytest.mark.parametrize(
    "payload",
    [
        *(b"", b"[DONE", b"[done]", b"\xff\xfe", b"{", b"[1,2]", b'"x"', b"null", b"42", b"{]}"),
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,  # crashes orjson < 3.9.15 unguarded
    ],
)
def test_chunk_facts_rejects_without_raising(payload: bytes) -> None:
    assert chunk_facts(payload) is None
