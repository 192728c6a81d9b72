"""vLLM's pooling APIs: embeddings, pooling, classification, scores and rerank. A JSON request
gets one JSON answer, never streamed, whose ``usage`` holds the prompt tokens; nothing is
generated. vLLM's engine counts a pooling request's one output as its first token, so the
answer is taken as that output (TTFT and prefill observed at its arrival). Pure: no I/O.
"""

from __future__ import annotations

from metrics_proxy.apis.base import Usage
from metrics_proxy.apis.json_answer import JsonAnswerApi

__all__ = ["POOLING", "POOLING_ROUTES", "pooling_usage"]

POOLING_ROUTES = (
    "/v1/embeddings",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
)


def pooling_usage(value: object) -> Usage | None:
    """A pooling answer's ``usage``: its ``prompt_tokens``, or, in a rerank answer of a
    vLLM that writes only ``total_tokens``, those (a pooling request generates nothing, so
    they are its prompt tokens). Never a generated token."""
    if type(value) is not dict:
        return None
    prompt = value.get("prompt_tokens")
    if prompt is None:
        prompt = value.get("total_tokens")
    return Usage(prompt, 0) if type(prompt) is int and prompt >= 0 else None


POOLING = JsonAnswerApi(POOLING_ROUTES, answer_is_output=True, read_usage=pooling_usage)
