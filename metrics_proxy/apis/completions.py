"""OpenAI's (legacy) completions (``/v1/completions``): output is each choice's ``text``."""

from __future__ import annotations

from typing import Any

from metrics_proxy.apis.openai import OpenAIApi


def carries_output(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice holds generated text."""
    text = choice.get("text")
    return bool(text) and type(text) is str


COMPLETIONS = OpenAIApi(("/v1/completions",), carries_output)
