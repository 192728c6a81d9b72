"""vLLM's tokens-in, tokens-out route (``/inference/v1/generate``): OpenAI's chunks, usage and
``stream_options`` around token ids, with ``n`` and ``max_tokens`` in ``sampling_params``.
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from metrics_proxy.apis.base import RequestFacts
from metrics_proxy.apis.openai import OpenAIApi, request_facts

__all__ = ["GENERATE_TOKENS", "carries_output"]


def carries_output(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice holds generated token ids."""
    token_ids = choice.get("token_ids")
    return bool(token_ids) and type(token_ids) is list


class TokensApi(OpenAIApi):
    """Streams and asks for usage as chat does; samples as ``sampling_params`` says."""

    __slots__ = ()

    def read_request(self, obj: dict[str, Any]) -> RequestFacts:
        params = obj.get("sampling_params")
        if type(params) is not dict:
            params = {}
        n, max_tokens = params.get("n"), params.get("max_tokens")
        return dataclasses.replace(
            request_facts(obj),
            n=n if type(n) is int and n >= 1 else 1,
            max_tokens=max_tokens if type(max_tokens) is int and max_tokens > 0 else None,
        )


GENERATE_TOKENS = TokensApi(("/inference/v1/generate",), carries_output)
