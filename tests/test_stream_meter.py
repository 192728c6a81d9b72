"""StreamMeter: the bytes it forwards, wherever the network cuts the stream."""

from __future__ import annotations

import pytest

from metrics_proxy.apis.base import NO_INJECTION, Injection
from metrics_proxy.apis.chat import CHAT
from metrics_proxy.stream_meter import StreamMeter

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
