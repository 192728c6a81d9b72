"""StreamMeter: the bytes it forwards, wherever the network cuts the stream."""

from __future__ import annotations

import pytest

from metrics_proxy.apis.base import NO_INJECTION, Injection
from metrics_proxy.apis.chat import CHAT
from metrics_proxy.stream_meter import MAX_KEPT_BACK, MAX_UNFINISHED_EVENT, StreamMeter

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
TOKENS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"tok%d"},"finish_reason":null}]}\n\n' % i
    for i in range(3)
]
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"
STREAM = ROLE + PING + b"".join(TOKENS) + FINISH + USAGE + DONE
STRIP = Injection(strip_final_usage=True, strip_chunk_usage=True)


def run(stream: bytes, cuts: list[int], injection: Injection) -> tuple[bytes, StreamMeter]:
    meter = StreamMeter(CHAT, injection)
    out = b""
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        forwarded, _ = meter.feed(stream[start:end])
        assert (out + forwarded) == stream[: len(out + forwarded)] or injection is not NO_INJECTION
        out += forwarded
    return out + meter.close()[0], meter


def test_each_chunk_says_which_outputs_its_events_carried() -> None:
    meter = StreamMeter(CHAT, NO_INJECTION)
    assert meter.feed(ROLE + PING) == (ROLE + PING, ())  # an empty content is no output
    assert meter.feed(TOKENS[0] + TOKENS[1]) == (TOKENS[0] + TOKENS[1], (0, 0))
    two = b'data: {"choices":[{"index":1,"delta":{"content":"x"}}]}\n\n'
    assert meter.feed(two + FINISH) == (two + FINISH, (1,))


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_any_cut_forwards_the_same_bytes_and_counts(cut: int) -> None:
    out, meter = run(STREAM, [cut], NO_INJECTION)
    assert out == STREAM
    assert meter.finish_reason == "stop"
    assert meter.done
    assert meter.usage is not None
    assert meter.usage.completion_tokens == 3


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_any_cut_removes_only_the_usage_the_proxy_asked_for(cut: int) -> None:
    out, meter = run(STREAM, [cut], STRIP)
    assert out == STREAM.replace(USAGE, b"")
    assert meter.usage is not None


def test_whole_events_and_comments_go_at_once_and_half_events_wait() -> None:
    meter = StreamMeter(CHAT, NO_INJECTION)
    outputs: list[int] = []

    def feed(chunk: bytes) -> bytes:
        out, seen = meter.feed(chunk)
        outputs.extend(seen)
        return out

    assert feed(PING) == PING  # a keep-alive is never held back
    half = len(TOKENS[0]) // 2
    assert feed(ROLE + TOKENS[0][:half]) == ROLE
    assert feed(TOKENS[0][half:]) == TOKENS[0]  # the held half goes with it
    # An upstream that dies mid-event: that half is never sent, so the error event the
    # proxy writes next arrives whole and alone.
    assert feed(TOKENS[1][:half]) == b""
    assert len(outputs) == 1


def test_usage_null_on_every_chunk_is_removed_for_a_client_that_did_not_ask() -> None:
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\n\n'
    out, meter = run(chunk + DONE, [], STRIP)
    assert out == b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n' + DONE
    assert meter.usage is None


def test_per_chunk_usage_is_cut_and_counts_stay_exact() -> None:
    chunks = [
        b'data: {"choices":[{"index":0,"delta":{"content":"t%d"}}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":%d}}\n\n' % (i, i + 1)
        for i in range(3)
    ]
    out, meter = run(b"".join(chunks) + USAGE + DONE, [40, 90], STRIP)
    assert b"usage" not in out
    assert out.count(b'"content":"t') == 3
    assert meter.usage is not None
    assert meter.usage.completion_tokens == 3


HOLD_FOR_FINGERPRINT = Injection(strip_final_usage=True, strip_chunk_usage=False)


def finish_chunk(index: int) -> bytes:
    return b'data: {"choices":[{"index":%d,"delta":{},"finish_reason":"stop"}]}\n\n' % index


def test_what_is_held_back_for_the_next_chunk_is_bounded() -> None:
    # An upstream that sends nothing but finish chunks cannot make the meter keep them all.
    meter = StreamMeter(CHAT, HOLD_FOR_FINGERPRINT)
    stream = b"".join(finish_chunk(i) for i in range(MAX_KEPT_BACK * 4))
    out, _ = meter.feed(stream)
    assert len(out) >= len(stream) - MAX_KEPT_BACK * len(finish_chunk(9999))
    out += meter.close()[0]
    assert out == stream  # every one goes out, in order, unchanged


def test_a_held_finish_chunk_goes_out_even_when_an_oversized_event_follows() -> None:
    meter = StreamMeter(CHAT, HOLD_FOR_FINGERPRINT)
    assert meter.feed(TOKENS[0] + finish_chunk(0)) == (TOKENS[0], (0,))  # the finish waits
    piece = b"data: " + b"x" * (MAX_UNFINISHED_EVENT + 1)
    assert meter.feed(piece) == (b"", ())
    assert meter.event_too_large
    assert meter.released_at_close == finish_chunk(0)


def test_a_held_finish_chunk_is_kept_apart_from_half_an_event_at_the_end() -> None:
    # The stream breaks inside the usage chunk: closing reads that half as an event, and the
    # finish chunk it releases is whole, to send before the error event.
    meter = StreamMeter(CHAT, HOLD_FOR_FINGERPRINT)
    meter.feed(TOKENS[0] + finish_chunk(0) + b'data: {"choices":[],"usage":{"prompt')
    meter.close()
    assert meter.released_at_close == finish_chunk(0)
