"""The simulated vLLM's answers, drawn per request: how long the prompt is, how many tokens
come back and how fast, and which requests fail, as a served model's would.

Each request draws from the simulator's own random stream, or from its ``seed`` when it
gives one (as vLLM's sampling does): a request with a seed gets the same answer every time.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

from metrics_proxy.simulator.behavior import Behavior

# Where a request's prompt is, across the APIs the simulator speaks.
_PROMPT_FIELDS = (
    *("messages", "prompt", "input", "instructions", "system", "query", "documents"),
    *("text_1", "text_2", "texts", "items", "questions", "token_ids"),
)
_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_CHARS_PER_TOKEN = 4  # about what a tokenizer makes of English text
_TTFT_SPREAD = 0.3  # sigma of the log-normal jitter around the median TTFT
_ITL_SPREAD = 0.15  # ... around the median inter-token latency, drawn once per request

_PASSAGE = (
    "This answer is simulated: no model wrote it. It streams one token at a time, paced like "
    "a served model, so that the proxy in front of it has something to measure: time to first "
    "token, the gaps between tokens, the length of each answer and how it finished. Point the "
    "proxy at a real vLLM server for real answers."
)
# The answer's text, a word a token, round and round.
WORDS = tuple(word + " " for word in _PASSAGE.split())


def _text_length(value: object) -> tuple[int, int]:
    """(characters of text, token ids) in a request field, however nested (a loop, not
    recursion: a hostile body may nest a thousand deep)."""
    chars = ids = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            ids += 1
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return chars, ids


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt's length in tokens, estimated: about four characters a token, a token id
    counting one."""
    chars, ids = _text_length([body.get(name) for name in _PROMPT_FIELDS])
    return max(1, ids + math.ceil(chars / _CHARS_PER_TOKEN))


def _limit(body: dict[str, Any]) -> int | None:
    for name in _LIMIT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _jitter(rng: random.Random, median: float, spread: float) -> float:
    return median * math.exp(rng.gauss(0.0, spread)) if spread else median


@dataclass(frozen=True)
class Profile:
    """How the simulated model answers; every figure a median, each request its own draw."""

    model: str = "my-model"  # the served model: a request naming another gets a 404
    max_model_len: int = 8192  # prompt + completion beyond it get a 400
    ttft: float = 0.2  # seconds to the first token
    itl: float = 0.03  # seconds between tokens
    output_tokens: int = 80  # tokens in an answer the request's max_tokens does not cut
    spread: float = 0.6  # sigma of the log-normal answer lengths; 0: all the same length
    error_rate: float = 0.0  # share of requests that fail with a 500, at random
    words: tuple[str, ...] = WORDS

    def draw(self, body: dict[str, Any], base: Behavior, rng: random.Random) -> Behavior:
        """This request's answer: ``base`` with its counts, pacing, finish or error."""
        seed = body.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool):
            rng = random.Random(seed)
        fails, length = rng.random() < self.error_rate, rng.lognormvariate(0.0, self.spread)
        ttft, itl = _jitter(rng, self.ttft, _TTFT_SPREAD), _jitter(rng, self.itl, _ITL_SPREAD)
        start = rng.randrange(len(self.words)) if self.words else 0
        prompt, limit = prompt_tokens(body), _limit(body)
        refusal = self._refusal(body, prompt, limit)
        if refusal is not None:
            return dataclasses.replace(base, status=refusal[0], error_message=refusal[1])
        if fails:
            return dataclasses.replace(base, status=500, error_message="simulated engine error")
        room = self.max_model_len - prompt
        tokens = max(1, round(self.output_tokens * length))
        cap = min(limit or room, room)
        words = self.words[start:] + self.words[:start]
        return dataclasses.replace(
            base,
            prompt_tokens=prompt,
            completion_tokens=min(tokens, cap),
            finish_reason="length" if tokens >= cap else "stop",
            ttft=ttft,
            itl=itl,
            answer_delay=ttft + itl * (min(tokens, cap) - 1),
            words=words,
        )

    def _refusal(
        self, body: dict[str, Any], prompt: int, limit: int | None
    ) -> tuple[int, str] | None:
        """The 4xx vLLM answers before its engine sees the request, with vLLM's message."""
        model = body.get("model")
        if isinstance(model, str) and model and model != self.model:
            return 404, f"The model `{model}` does not exist."
        asked = prompt + (limit or 0)
        if asked > self.max_model_len or prompt >= self.max_model_len:
            return 400, (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {asked} tokens ({prompt} in the messages, {limit or 0} in the "
                "completion). Please reduce the length of the messages or completion."
            )
        return None
