"""SageMaker's ``/invocations``, which vLLM always serves: one route for chat, completions and
the pooling APIs, each request going to the first whose request type its body validates as
(chat, then completions, for a model that generates; the pooling types for one that pools).
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from metrics_proxy.apis.base import Api, ApiChoice
from metrics_proxy.apis.chat import CHAT
from metrics_proxy.apis.completions import COMPLETIONS
from metrics_proxy.apis.pooling import POOLING

__all__ = ["INVOCATIONS", "invoked_api"]


def invoked_api(obj: dict[str, Any]) -> Api:
    """The API vLLM hands this body to, told by the member each request type requires:
    chat's ``messages``, completions' ``prompt`` (or ``prompt_embeds``), else pooling.

    A pooling model takes a ``messages`` body as an embedding of a chat. The proxy cannot
    tell which kind of model it is in front of and reads it as chat, which finds the same
    prompt tokens in the answer; only the TTFT of such a pooling answer is not observed."""
    if type(obj.get("messages")) is list:
        return CHAT
    if obj.get("prompt") is not None or obj.get("prompt_embeds") is not None:
        return COMPLETIONS
    return POOLING


INVOCATIONS = ApiChoice(("/invocations",), invoked_api)
