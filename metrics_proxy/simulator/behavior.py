"""Behavior: every knob of one simulated answer, its token counts and pacing, its framing,
and the faults a test may ask for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson

USAGE_MODES = ("honor", "never", "always", "force", "finish")


@dataclass(frozen=True)
class Behavior:
    """How the simulator answers a generation request; see the field comments for each knob."""

    prompt_tokens: int = 7
    completion_tokens: int = 5  # generated tokens = content chunks per choice
    ttft: float = 0.0  # seconds before the first generated chunk (after headers + role chunk)
    itl: float = 0.0  # seconds between generated chunks
    answer_delay: float = 0.0  # not streamed: seconds before the whole answer is sent
    finish_reason: str = "stop"
    role_chunk: bool = True  # chat: a role-only preamble chunk first, as vLLM sends
    # "honor" stream_options (vLLM), "never", "always" a final usage chunk, "force" usage on
    # every chunk and a final usage chunk whatever was asked (vLLM's
    # --enable-force-include-usage), "finish" usage on the finish chunk alone (transformers serve)
    usage: str = "honor"
    split: int = 0  # N > 0: write the stream in N-byte pieces (events cut across HTTP chunks)
    crlf: bool = False  # \r\n line endings in the SSE stream
    keepalive: bool = False  # a ": ping" comment before every event
    done: bool = True  # end the stream with "data: [DONE]"
    status: int = 200  # != 200: answer with this status and an OpenAI-shape error body
    reset_after: int | None = None  # stream: abort the TCP connection after N token steps
    stall_after: int | None = None  # stream: go silent after N token steps until the client leaves
    stall_before_headers: bool = False  # send nothing at all until the client leaves
    content_type: str | None = None  # override the response content type
    raw_body: bytes | None = None  # non-stream: send exactly these bytes as the body
    # vLLM's --enable-per-request-metrics: this `metrics` object on the usage chunk / response
    engine_metrics: dict[str, float] | None = None
    # vLLM's system_fingerprint: on each finish chunk, or on the usage chunk with include_usage
    system_fingerprint: str | None = None
    error_after: int | None = None  # /v1/messages stream: an error event after N token steps
    # The answer's text, one token a word, round and round; none: "tok0 ", "tok1 ", ...
    words: tuple[str, ...] = ()
    error_message: str = "fake error"  # the message of a `status` answer

    def __post_init__(self) -> None:
        if self.usage not in USAGE_MODES:
            raise ValueError(f"usage must be one of {USAGE_MODES}, got {self.usage!r}")

    def token(self, i: int) -> str:
        """The text of generated token ``i``."""
        return self.words[i % len(self.words)] if self.words else f"tok{i} "

    def text(self) -> str:
        """The whole answer's text, every token of one choice."""
        return "".join(self.token(i) for i in range(self.completion_tokens))

    def override(self, raw_json: str | bytes) -> Behavior:
        """This behavior with the fields of a JSON object replaced.

        >>> Behavior().override('{"completion_tokens": 2}').completion_tokens
        2
        """
        fields = orjson.loads(raw_json)
        if not isinstance(fields, dict):
            raise ValueError(f"a Behavior override must be a JSON object, got {raw_json!r}")
        unknown = set(fields) - {f.name for f in dataclasses.fields(Behavior)}
        if unknown:
            raise ValueError(f"unknown Behavior fields: {sorted(unknown)}")
        if isinstance(fields.get("raw_body"), str):  # JSON has no bytes
            fields["raw_body"] = fields["raw_body"].encode()
        if isinstance(fields.get("words"), list):  # nor tuples
            fields["words"] = tuple(fields["words"])
        return dataclasses.replace(self, **fields)
