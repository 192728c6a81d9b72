"""ResponseScanner and ResponseReader: a non-streamed answer's usage and finish reasons, read
chunk by chunk as decoding the whole body would read them, without keeping it."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import orjson
import pytest

from metrics_proxy.apis.base import ResponseFacts, Usage
from metrics_proxy.apis.body_scan import ResponseReader as ScanningReader
from metrics_proxy.apis.body_scan import ResponseScanner
from metrics_proxy.apis.openai import response_facts


def ResponseReader() -> ScanningReader:
    return ScanningReader(response_facts)


NO_FACTS = ResponseFacts(None, None, 0)
USAGE = b'{"prompt_tokens":9,"total_tokens":30,"completion_tokens":21}'
# vLLM's order: usage before prompt_logprobs, which can be far larger than the rest.
VLLM_CHAT = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hi!"},"logprobs":null,"finish_reason":"length"}],'
    b'"usage":' + USAGE + b',"prompt_logprobs":[null,{"791":{"logprob":-1.5,"rank":1,'
    b'"decoded_token":"}\\"usage\\":{"}}],"kv_transfer_params":null}'
)
LOGPROB = b'{"12345":{"logprob":-0.123456789,"rank":1,"decoded_token":"\\u0120the"}},'


def scan(*chunks: bytes) -> ResponseFacts:
    scanner = ResponseScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.facts()


CASES = {
    "vllm chat": (VLLM_CHAT, ResponseFacts(Usage(9, 21), "length", 1)),
    "usage only inside strings": (
        b'{"choices":[{"text":"\\"usage\\":' + USAGE.replace(b'"', b'\\"') + b'",'
        b'"finish_reason":"stop"}],"note":"usage","\\"usage\\"":' + USAGE + b"}",
        ResponseFacts(None, "stop", 1),
    ),
    "escaped quotes and backslashes around names": (
        b'{"a":"x\\\\","usage":' + USAGE + b',"b":"\\\\\\"usage\\":1"}',
        ResponseFacts(Usage(9, 21), None, 0),
    ),
    "nested usage members never match": (
        b'{"choices":[{"usage":' + USAGE + b',"message":{"usage":' + USAGE + b"}}],"
        b'"meta":{"usage":' + USAGE + b'},"list":[{"usage":' + USAGE + b"}]}",
        ResponseFacts(None, None, 1),
    ),
    "top-level usage after nested ones": (
        b'{"meta":{"usage":{"prompt_tokens":1,"completion_tokens":1}},'
        b'"usage":{"prompt_tokens":2,"completion_tokens":3,"details":{"cached_tokens":[0]}}}',
        ResponseFacts(Usage(2, 3), None, 0),
    ),
    "usage absent": (
        b'{"choices":[{"index":0,"text":"x","finish_reason":"stop"}]}',
        ResponseFacts(None, "stop", 1),
    ),
    "usage null": (b'{"usage":null,"choices":[]}', NO_FACTS),
    "the last duplicate member wins": (
        b'{"usage":' + USAGE + b',"choices":[{"finish_reason":"stop"}],"usage":null,'
        b'"choices":[{"finish_reason":"length","finish_reason":null},{"finish_reason":"abort"}]}',
        ResponseFacts(None, "abort", 2),
    ),
    "the last non-null finish reason of n choices": (
        b'{"choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason":"length"},'
        b'{"index":2,"finish_reason":null},7,[],"s"]}',
        ResponseFacts(None, "length", 6),
    ),
    "escaped finish reason": (
        b'{"choices":[{"finish_reason":"\\u0074ool_calls"}]}',
        ResponseFacts(None, "tool_calls", 1),
    ),
    "escaped member names": (
        b'{"\\u0075sage":{"prompt_tokens":4,"completion_tokens":5},"ch\\u006fices":[{}]}',
        ResponseFacts(Usage(4, 5), None, 1),
    ),
    "whitespace everywhere": (
        b' \r\n{ "usage" :\t{ "prompt_tokens" : 1 } , "choices" : [ { "finish_reason" : '
        b'"stop" } , null ] }\n ',
        ResponseFacts(Usage(1, 0), "stop", 2),
    ),
    "brackets inside strings": (
        b'{"x":[{"a":"]}]}"},"[{"],"usage":{"prompt_tokens":1,"completion_tokens":1}}',
        ResponseFacts(Usage(1, 1), None, 0),
    ),
    "deeper than the regex follows": (
        b'{"x":' + b"[" * 40 + b'"usage"' + b"]" * 40 + b',"usage":{"prompt_tokens":3}}',
        ResponseFacts(Usage(3, 0), None, 0),
    ),
    "trailing bytes": (b'{"usage":{"prompt_tokens":1}} x', NO_FACTS),
    "truncated": (b'{"usage":{"prompt_tokens":1},"x":[1,', NO_FACTS),
    "an array": (b'[{"usage":{"prompt_tokens":1}}]', NO_FACTS),
    "trailing comma": (b'{"usage":{"prompt_tokens":1},}', NO_FACTS),
    "a missing colon": (b'{"usage" {"prompt_tokens":1}}', NO_FACTS),
    "a closer that does not match": (b'{"choices":[{}}', NO_FACTS),
}

# Where the scanner's bounds on what it keeps make it read less than decoding would.
BOUNDED = {
    "a finish reason too long to be one": (
        b'{"choices":[{"finish_reason":"stop"},{"finish_reason":"' + b"x" * 100 + b'"}]}',
        ResponseFacts(None, "stop", 2),
    ),
    "a usage too large to be one": (
        b'{"usage":{"prompt_tokens":1,"completion_tokens":2,"pad":"' + b"x" * 70000 + b'"}}',
        NO_FACTS,
    ),
    "nested deeper than any answer": (
        b'{"x":' + b"[" * 80 + b"]" * 80 + b',"usage":{"prompt_tokens":3}}',
        NO_FACTS,
    ),
}


@pytest.mark.parametrize(
    ("body", "expected"), [*CASES.values(), *BOUNDED.values()], ids=[*CASES, *BOUNDED]
)
def test_facts_whole_and_split_at_every_byte(body: bytes, expected: ResponseFacts) -> None:
    assert scan(body) == expected
    assert scan(*(body[i : i + 1] for i in range(len(body)))) == expected
    if len(body) < 1000:
        for cut in range(1, len(body)):
            assert scan(body[:cut], body[cut:]) == expected, cut


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.random()
    if depth > 4 or kind < 0.3:
        return rng.choice([None, True, -2.5e3, 7, "usage", 'q"u\\o{t[e', "\u00e9]"])
    if kind < 0.6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    names = ["usage", "finish_reason", "choices", 'k"}', "a"]
    return {rng.choice(names): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _random_body(rng: random.Random) -> bytes:
    obj: dict[str, Any] = {}
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["usage", "choices", "prompt_logprobs", "u\\sage"])
        if name == "usage" and rng.random() < 0.7:
            obj[name] = {"prompt_tokens": rng.randint(0, 9), "details": _random_value(rng, 2)}
        elif name == "choices" and rng.random() < 0.8:
            reasons = [None, "stop", "length", 3, 'a"b']
            obj[name] = [
                {"finish_reason": rng.choice(reasons), "message": _random_value(rng, 3)}
                if rng.random() < 0.8
                else _random_value(rng, 3)
                for _ in range(rng.randint(0, 3))
            ]
        else:
            obj[name] = _random_value(rng, 1)
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if rng.random() < 0.3 else 0)


@pytest.mark.parametrize(("body", "expected"), CASES.values(), ids=CASES.keys())
def test_the_cases_read_as_decoding_them_would(body: bytes, expected: ResponseFacts) -> None:
    assert response_facts(body) == expected


def test_random_bodies_read_as_decoding_them_would_wherever_they_are_cut() -> None:
    rng = random.Random(9)
    for _ in range(300):
        body = _random_body(rng)
        if rng.random() < 0.1:
            body = body[: rng.randint(0, len(body))]
        expected = response_facts(body)
        cut = rng.randint(0, len(body))
        assert scan(body[:cut], body[cut:]) == expected, (body, cut)
        assert scan(*(body[i : i + 3] for i in range(0, len(body), 3))) == expected, body


def test_memory_stays_flat_whatever_the_body_size() -> None:
    chunk = LOGPROB * (1024 * 1024 // len(LOGPROB))
    head, tail = VLLM_CHAT.split(b'"prompt_logprobs":[', 1)
    reader = ResponseReader()
    tracemalloc.start()
    try:
        reader.feed(head + b'"prompt_logprobs":[')
        for _ in range(48):  # 48 MiB, each piece new, as the network hands them over
            reader.feed(memoryview(chunk).tobytes())
        reader.feed(tail)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reader.facts() == ResponseFacts(Usage(9, 21), "length", 1)
    assert peak < 3 * len(chunk)  # one piece, the next, and little else


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_the_reader_decodes_small_bodies_whole_and_scans_large_ones(pieces: int) -> None:
    small = b'{"choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":1},"x":[1,,]}'
    large = VLLM_CHAT.replace(b'"Hi!"', b'"' + b"hi " * 40000 + b'"')
    for body, expected in [
        (small, NO_FACTS),  # decoded whole: not JSON, so no facts at all
        (large, ResponseFacts(Usage(9, 21), "length", 1)),
    ]:
        reader = ResponseReader()
        step = len(body) // pieces + 1
        for start in range(0, len(body), step):
            reader.feed(body[start : start + step])
        assert reader.facts() == expected


def test_feeding_after_the_body_went_wrong_is_ignored() -> None:
    scanner = ResponseScanner()
    scanner.feed(b"<html>")
    scanner.feed(b'{"usage":{"prompt_tokens":1}}')
    assert scanner.facts() == NO_FACTS


def test_an_api_of_another_shape_names_its_usage_and_finish_members() -> None:
    # Cohere's answers, say: the finish word at the top level, the counts in another member.
    body = (
        b'{"id":"c","finish_reason":"MAX_TOKENS","message":{"finish_reason":"x","meta":{"n":1}},'
        b'"usage":{"prompt_tokens":9},"meta":{"api":"2","n":4}}'
    )

    def read_meta(value: object) -> Usage | None:
        return Usage(value["n"], 0) if type(value) is dict and "n" in value else None

    for cut in range(len(body) + 1):
        scanner = ResponseScanner(
            usage_member="meta", read_usage=read_meta, reason_member="finish_reason"
        )
        scanner.feed(body[:cut])
        scanner.feed(body[cut:])
        assert scanner.facts() == ResponseFacts(Usage(4, 0), "MAX_TOKENS", 0), cut
    assert scan(body) == ResponseFacts(Usage(9, 0), None, 0)  # OpenAI's shape sees neither
