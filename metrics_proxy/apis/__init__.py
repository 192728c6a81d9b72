"""The APIs the proxy meters, one module each, and which route is which."""

from __future__ import annotations

from metrics_proxy.apis.audio import AUDIO
from metrics_proxy.apis.base import Api, ApiChoice
from metrics_proxy.apis.chat import CHAT, CHAT_BATCH
from metrics_proxy.apis.cohere import COHERE_CHAT, COHERE_EMBED
from metrics_proxy.apis.completions import COMPLETIONS
from metrics_proxy.apis.generate_tokens import GENERATE_TOKENS
from metrics_proxy.apis.invocations import INVOCATIONS
from metrics_proxy.apis.json_answer import DECISIONS, GENERATIVE_SCORING
from metrics_proxy.apis.messages import MESSAGES
from metrics_proxy.apis.pooling import POOLING
from metrics_proxy.apis.responses import RESPONSES

__all__ = ["API_BY_ROUTE", "METERED_PATHS", "Api", "ApiChoice"]

# One API a line: the table grows by one line per API.
METERED_APIS: tuple[Api | ApiChoice, ...] = (
    CHAT,
    COMPLETIONS,
    MESSAGES,
    RESPONSES,
    POOLING,
    COHERE_EMBED,
    COHERE_CHAT,
    GENERATE_TOKENS,
    CHAT_BATCH,
    DECISIONS,
    GENERATIVE_SCORING,
    INVOCATIONS,
    AUDIO,
)
API_BY_ROUTE: dict[str, Api | ApiChoice] = {
    route: api for api in METERED_APIS for route in api.routes
}
METERED_PATHS = tuple(API_BY_ROUTE)
