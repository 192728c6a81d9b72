"""OpenAI's model list (``GET /v1/models``), as vLLM answers it: which models a server serves.
Pure: no I/O."""

from __future__ import annotations

import orjson

__all__ = ["served_models"]


def served_models(body: bytes) -> list[str] | None:
    """The ids in a model list (``{"object": "list", "data": [{"id": ...}, ...]}``), or None
    when ``body`` is no such list."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list):
        return None
    return [
        model["id"]
        for model in data
        if isinstance(model, dict) and isinstance(model.get("id"), str)
    ]
