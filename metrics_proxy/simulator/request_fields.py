"""Reading a request's fields as vLLM's pydantic models do: what the simulator must refuse,
and the few fields that shape its answer."""

from __future__ import annotations

from typing import Any

# vLLM's `stream`, `include_usage` and `continuous_usage_stats` are Optional[bool] = False,
# read by pydantic v2 in lax mode: booleans, 0 and 1, these words in any ASCII case, null for
# the default; anything else is a 400.
_BOOL_WORDS = {"0": False, "off": False, "f": False, "false": False, "n": False, "no": False}
_BOOL_WORDS |= {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True}


def vllm_bool(fields: dict[str, Any], name: str) -> bool:
    """A boolean field as pydantic reads it; ValueError for anything it refuses."""
    value = fields.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.isascii() and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    raise ValueError(f"{name}: Input should be a valid boolean")


def usage_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """stream_options' (include_usage, continuous_usage_stats), validated as vLLM does."""
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise ValueError("stream_options: Input should be a valid dictionary")
    return vllm_bool(options, "include_usage"), vllm_bool(options, "continuous_usage_stats")


def input_count(body: dict[str, Any]) -> int:
    """How many inputs a pooling request holds; vLLM answers one datum for each."""
    for name in ("input", "texts", "documents", "text_2", "data_2", "items"):
        value = body.get(name)
        if isinstance(value, list) and value and not isinstance(value[0], int):
            return len(value)
    return 1


def invoked_pooling_path(body: dict[str, Any]) -> str:
    """The pooling route whose request type this /invocations body validates as."""
    if "query" in body and "documents" in body:
        return "/rerank"
    if any(name in body for name in ("text_1", "queries", "data_1")):
        return "/score"
    return "/v1/embeddings"
