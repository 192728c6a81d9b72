"""OpenAI's chat completions (``/v1/chat/completions``): output is in each choice's ``delta``."""

from __future__ import annotations

from typing import Any

from metrics_proxy.apis.openai import OpenAIApi


def carries_output(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice holds generated content, reasoning or tool calls."""
    delta = choice.get("delta")
    if type(delta) is not dict:
        return False
    for key in ("content", "reasoning_content", "reasoning"):
        value = delta.get(key)
        if value and type(value) is str:
            return True
    tool_calls = delta.get("tool_calls")
    return bool(tool_calls) and type(tool_calls) is list


CHAT = OpenAIApi(("/v1/chat/completions",), carries_output)
# Several conversations in one request, one choice each; vLLM refuses to stream it.
CHAT_BATCH = OpenAIApi(("/v1/chat/completions/batch",), carries_output)
