"""Tests for apis/openai.py and apis/base.py: request parsing, usage injection, response facts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from metrics_proxy.apis.base import (
    NO_INJECTION,
    BadRequestBody,
    Injection,
    RequestFacts,
    ResponseFacts,
    Usage,
    UsageMode,
    parse_request,
)
from metrics_proxy.apis.openai import (
    add_usage_request,
    lax_bool,
    request_facts,
    response_facts,
    strip_usage_field,
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is empty"),
        (b" \r\n\t", "Request body is empty"),
        (b'{"model": "m",', "Request body is not valid JSON: "),
        (b"\xff", "Request body is not valid JSON: "),
        (b'{"secret-token": }', "Request body is not valid JSON: "),
        # Deep nesting is refused by orjson itself (its wording varies between versions).
        (b"[" * 5000 + b"]" * 5000, "Request body is not valid JSON: "),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "Request body is not valid JSON: "),
        (b'[{"model": "m"}]', "Request body must be a JSON object"),
        (b"null", "Request body must be a JSON object"),
    ],
    ids=lambda value: repr(value)[:24],
)
def test_parse_request_errors(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestBody) as info:
        parse_request(body)
    assert str(info.value).startswith(message)
    assert "secret" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_request_object() -> None:
    assert parse_request(b' {"model": "m", "stream": true} ') == {"model": "m", "stream": True}


# How vLLM reads `stream`, `include_usage` and `continuous_usage_stats` (Optional[bool] = False,
# pydantic v2, lax mode); None: vLLM answers 400.
LAX_BOOLS: list[tuple[object, bool | None]] = [
    (True, True), (False, False), (None, False),
    (1, True), (0, False), (1.0, True), (0.0, False), (-0.0, False),
    (2, None), (-1, None), (0.5, None), (10**30, None), (float("nan"), None),
    *[(word, True) for word in ("1", "on", "t", "true", "y", "yes", "TRUE", "True", "Yes", "ON")],
    *[(word, False) for word in ("0", "off", "f", "false", "n", "no", "FALSE", "No", "OFF", "F")],
    ("", None), (" true", None), ("true ", None), ("1.0", None), ("00", None), ("01", None),
    ("maybe", None), ("truee", None), ("\uff54rue", None), ("\u212a", None), ("null", None),
    ([], None), ({}, None), ([True], None), ({"include_usage": True}, None),
]  # fmt: skip


@pytest.mark.parametrize(("value", "expected"), LAX_BOOLS, ids=repr)
def test_lax_bool(value: object, expected: bool | None) -> None:
    assert lax_bool(value) is expected


def test_lax_bool_reads_as_pydantic_does() -> None:
    pydantic = pytest.importorskip("pydantic")  # the openai SDK's, a dev dependency
    field = pydantic.TypeAdapter(bool | None)
    for value, _ in LAX_BOOLS:
        try:
            read = field.validate_python(value)
        except pydantic.ValidationError:
            read = "refused"
        assert lax_bool(value) is {None: False, "refused": None}.get(read, read), value


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({}, RequestFacts(False, False, False, 1, None)),
        (
            {"stream": True, "stream_options": {"include_usage": True}, "n": 3, "max_tokens": 9},
            RequestFacts(True, True, False, 3, 9),
        ),
        (
            {"stream_options": {"include_usage": 1, "continuous_usage_stats": "on"}},
            RequestFacts(False, True, True, 1, None),
        ),
        (
            {"stream": "true", "stream_options": {"include_usage": "TRUE"}},
            RequestFacts(True, True, False, 1, None),
        ),
        (
            {"stream": "true", "stream_options": "yes", "n": "2"},
            RequestFacts(True, False, False, 1, None, refused=True),
        ),
        (
            {"stream": 1, "stream_options": {"include_usage": 1, "continuous_usage_stats": 2}},
            RequestFacts(True, True, False, 1, None, refused=True),
        ),
        ({"stream": "maybe"}, RequestFacts(False, False, False, 1, None, refused=True)),
        ({"stream": 1, "n": True, "max_tokens": True}, RequestFacts(True, False, False, 1, None)),
        ({"n": 0, "max_tokens": 1.5}, RequestFacts(False, False, False, 1, None)),
        (
            {"n": -2, "max_tokens": -5, "max_completion_tokens": 0},
            RequestFacts(False, False, False, 1, None),
        ),
        ({"max_tokens": 7, "max_completion_tokens": 4}, RequestFacts(False, False, False, 1, 4)),
        ({"max_tokens": 7, "max_completion_tokens": None}, RequestFacts(False, False, False, 1, 7)),
        ({"stream_options": None, "n": None}, RequestFacts(False, False, False, 1, None)),
    ],
)
def test_request_facts(obj: dict[str, Any], expected: RequestFacts) -> None:
    assert request_facts(obj) == expected


def inject(body: bytes, mode: UsageMode) -> tuple[bytes, Injection]:
    obj = parse_request(body)
    return add_usage_request(body, obj, request_facts(obj), mode)


BODY = b'{"model":"m", "messages":[{"role":"user","content":"{\\"a\\":1}"}], "stream":true}'


@pytest.mark.parametrize(
    ("mode", "member", "injection"),
    [
        # Only what include_usage causes: the usage chunk and OpenAI's "usage": null.
        (UsageMode.INCLUDE, b'"stream_options":{"include_usage":true},', Injection(True, False)),
        (
            UsageMode.CONTINUOUS,
            b'"stream_options":{"include_usage":true,"continuous_usage_stats":true},',
            Injection(True, True),
        ),
    ],
)
def test_splice_keeps_every_client_byte(
    mode: UsageMode, member: bytes, injection: Injection
) -> None:
    body, added = inject(b"\n " + BODY, mode)
    assert body == b"\n {" + member + BODY[1:]
    assert added == injection
    sent = orjson.loads(body)
    assert sent.pop("stream_options")["include_usage"] is True
    assert sent == orjson.loads(BODY)


def test_splice_into_an_empty_object_adds_no_comma() -> None:
    facts = RequestFacts(True, False, False, 1, None)
    sent, _ = add_usage_request(b"{ }", {}, facts, UsageMode.INCLUDE)
    assert sent == b'{"stream_options":{"include_usage":true} }'


@pytest.mark.parametrize(
    ("body", "mode"),
    [
        (BODY, UsageMode.NONE),
        (b'{"model":"m","stream":false}', UsageMode.CONTINUOUS),
        (b'{"stream":"false"}', UsageMode.INCLUDE),
        (b'{"stream":"yes","stream_options":"yes"}', UsageMode.INCLUDE),
        (b'{"stream":2,"stream_options":{}}', UsageMode.CONTINUOUS),
        (b'{"stream":true,"stream_options":{"include_usage":"maybe"}}', UsageMode.INCLUDE),
        (b'{"stream":true,"stream_options":{"continuous_usage_stats":[]}}', UsageMode.CONTINUOUS),
        (b'{"stream":1,"stream_options":{"include_usage":"yes"}}', UsageMode.INCLUDE),
        (
            b'{"stream":"t","stream_options":{"include_usage":1,"continuous_usage_stats":"y"}}',
            UsageMode.CONTINUOUS,
        ),
        (b'{"stream":true,"stream_options":{"include_usage":true}}', UsageMode.INCLUDE),
        (
            b'{"stream":true,"stream_options":{"continuous_usage_stats":true,"include_usage":true}}',
            UsageMode.CONTINUOUS,
        ),
    ],
)
def test_nothing_to_add_returns_the_same_bytes(body: bytes, mode: UsageMode) -> None:
    sent, added = inject(body, mode)
    assert sent is body
    assert added is NO_INJECTION


BOTH = {"include_usage": True, "continuous_usage_stats": True}
INCLUDE, CONTINUOUS = UsageMode.INCLUDE, UsageMode.CONTINUOUS


@pytest.mark.parametrize(
    ("options", "mode", "sent_options", "injection"),
    [
        (b'{"continuous_usage_stats": true}', INCLUDE, BOTH, Injection(True, True)),
        (b'{"include_usage": false, "x": [1]}', INCLUDE, {"include_usage": True, "x": [1]},
         Injection(True, False)),
        (b"null", INCLUDE, {"include_usage": True}, Injection(True, False)),
        (b'{"include_usage": true}', CONTINUOUS, BOTH, Injection(False, True, False)),
        # The client's own spellings keep their meaning to vLLM: usage at the end, not per chunk.
        (b'{"include_usage": "yes", "continuous_usage_stats": 0}', CONTINUOUS, BOTH,
         Injection(False, True, False)),
        (b'{"include_usage": "no", "continuous_usage_stats": 0}', INCLUDE,
         {"include_usage": True, "continuous_usage_stats": 0}, Injection(True, False)),
        (b'{"include_usage": null, "continuous_usage_stats": "Y"}', INCLUDE, BOTH,
         Injection(True, True)),
    ],
)  # fmt: skip
def test_existing_stream_options_are_rewritten(
    options: bytes, mode: UsageMode, sent_options: dict[str, Any], injection: Injection
) -> None:
    # orjson would turn this seed into a float on a round trip: the client's bytes are kept.
    rest = b'"model": "m", "seed": 123456789012345678901234567890, "stream": true'
    last = b"{" + rest + b', "stream_options": ' + options + b"}"
    first = b'{"stream_options" :' + options + b" , " + rest + b"}"
    for body in (last, first):
        sent, added = inject(body, mode)
        assert added == injection
        assert sent.startswith(b'{"stream_options":')
        assert sent.endswith(b"," + rest + b"}")
        decoded = orjson.loads(sent)
        assert decoded.pop("stream_options") == sent_options
        assert decoded == orjson.loads(b"{" + rest + b"}")


def test_nested_stream_options_key_is_not_the_member() -> None:
    body = b'{"tools":[{"stream_options":1}],"stream":true,"stream_options":{}}'
    sent, _ = inject(body, UsageMode.INCLUDE)
    assert (
        sent
        == b'{"stream_options":{"include_usage":true},"tools":[{"stream_options":1}],"stream":true}'
    )


CHUNK = (
    b'{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}],'
    b'"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}'
)


@pytest.mark.parametrize(
    "data",
    [
        CHUNK,
        b'{"usage":{"prompt_tokens":5,"details":{"cached":null}},"id":"x"}',
        b'{ "id" : "x" , "usage" : null , "choices" : [] }',
        b'{"id":"x",\n  "usage": {"prompt_tokens": 5}\n}',
        b'{"usage":{}}',
        b'{"choices":[{"delta":{"content":"\\"usage\\":{\\"a\\":1}, \\\\"}}],"usage":{"a":1}}',
        b'{"choices":[{"usage":{"a":1}}],"text":"usage","usage":null,"usage2":1}',
    ],
)
def test_strip_usage_field(data: bytes) -> None:
    stripped = strip_usage_field(data)
    expected = orjson.loads(data)
    del expected["usage"]
    assert orjson.loads(stripped) == expected
    # Byte surgery: one contiguous run holding the member was cut, the rest is untouched.
    cut = len(data) - len(stripped)
    assert any(
        data[:a] + data[a + cut :] == stripped
        and data[a : a + cut].lstrip(b", \n").startswith(b'"usage"')
        for a in range(len(stripped) + 1)
    )


def test_strip_usage_field_on_vllm_chunk_is_exact() -> None:
    assert strip_usage_field(CHUNK) == CHUNK[: CHUNK.index(b',"usage"')] + b"}"


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":"x","choices":[{"usage":{"a":1}}]}',
        b'{"id":"usage","content":"\\"usage\\": 1"}',
        b"[DONE]",
        b'["usage",{"usage":1}]',
        b"",
        b'{"usage":1',
        b'{"a":"unterminated \\"usage\\":',
        b"\xff\xfe",
    ],
)
def test_strip_usage_field_leaves_other_bytes_alone(data: bytes) -> None:
    assert strip_usage_field(data) is data


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"object":"chat.completion","choices":[{"index":0,"finish_reason":"stop"},'
            b'{"index":1,"finish_reason":"length"},{"index":2,"finish_reason":null}],'
            b'"usage":{"prompt_tokens":9,"total_tokens":30,"completion_tokens":21}}',
            ResponseFacts(Usage(9, 21), "length", 3),
        ),
        (b'{"choices":[{"text":"x","finish_reason":"stop"}]}', ResponseFacts(None, "stop", 1)),
        (b'{"choices":"x","usage":{"prompt_tokens":1}}', ResponseFacts(Usage(1, 0), None, 0)),
        (b'{"choices":[1,null,{"finish_reason":7}],"usage":[]}', ResponseFacts(None, None, 3)),
        (b'{"error":{"message":"no"}}', ResponseFacts(None, None, 0)),
        (b"[1]", ResponseFacts(None, None, 0)),
        (b"not json", ResponseFacts(None, None, 0)),
        (b"", ResponseFacts(None, None, 0)),
        (b"\xff", ResponseFacts(None, None, 0)),
        (b"[" * 5000 + b"]" * 5000, ResponseFacts(None, None, 0)),
    ],
)
def test_response_facts(body: bytes, expected: ResponseFacts) -> None:
    assert response_facts(body) == expected
