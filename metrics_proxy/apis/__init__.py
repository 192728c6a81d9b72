"""The APIs the proxy meters, one module each, and which route is which."""

from __future__ import annotations

from metrics_proxy.apis.audio import AUDIO
from metrics_proxy.apis.base import Api
from metrics_proxy.apis.chat import CHAT
from metrics_proxy.apis.completions import COMPLETIONS

__all__ = ["API_BY_ROUTE", "METERED_PATHS", "Api"]

API_BY_ROUTE: dict[str, Api] = {
    route: api for api in (CHAT, COMPLETIONS, AUDIO) for route in api.routes
}
METERED_PATHS = tuple(API_BY_ROUTE)
