"""One look at the upstream as the proxy starts: does it answer, and which models does it
serve? What it finds goes to the log; nothing waits for it (the proxy serves at once, and an
upstream that comes up later is fine), and a shutdown cancels it. ``fetch_models`` is the
bounded read of the list that --model-name auto repeats (model_watch.py)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from metrics_proxy.apis.models import served_models
from metrics_proxy.config import Config
from metrics_proxy.errors import ErrorAnswerReader, status_cause, upstream_cause
from metrics_proxy.log_format import text_value
from metrics_proxy.log_safety import mask_url
from metrics_proxy.recorder import AUTO_MODEL
from metrics_proxy.upstream_client import Upstream

log = logging.getLogger("metrics_proxy")

MODELS_PATH = "/v1/models"
_UNBOUNDED_CHECK = 10.0  # seconds, when --connect-timeout is 0 (no limit): its default
_MAX_ANSWER = 1 << 20  # a model list is small; a larger answer is none
_MAX_SHOWN = 20


class ModelListError(Exception):
    """GET /v1/models gave no model list; the message says why, safe to log."""

    def __init__(self, cause: str, *, unreachable: bool = False) -> None:
        super().__init__(cause)
        self.unreachable = unreachable


def upstream_where(config: Config) -> str:
    return f"upstream {mask_url(config.upstream_url)}"


async def fetch_models(upstream: Upstream, config: Config) -> list[str]:
    """The ids the upstream lists in ``GET /v1/models`` (with its key, if set), bounded by
    --connect-timeout and in size; :class:`ModelListError` says what went wrong."""
    seconds = config.connect_timeout or _UNBOUNDED_CHECK
    try:
        async with asyncio.timeout(seconds) as bound:
            status, body = await _get_models(upstream)
    except (TimeoutError, aiohttp.ClientError) as exc:
        if bound.expired():
            cause = f"no answer to GET {MODELS_PATH} within {seconds * 1000:.0f} ms"
        else:
            cause = upstream_cause(exc, answered=False)
        raise ModelListError(cause, unreachable=True) from None
    if status >= 400:
        reader = ErrorAnswerReader()
        reader.feed(body)
        cause = status_cause(status, reader.message())
        raise ModelListError(f"GET {MODELS_PATH}: {text_value(cause)}")
    models = served_models(body)
    if models is None:
        raise ModelListError(f"the answer to GET {MODELS_PATH} is no model list")
    return models


async def check_upstream(upstream: Upstream, config: Config) -> list[str] | None:
    """One look as the proxy starts: an INFO line with the models served, or a WARNING with
    what went wrong; a WARNING too when --model-name is not among them. The models, or None."""
    where = upstream_where(config)
    try:
        models = await fetch_models(upstream, config)
    except ModelListError as exc:
        if exc.unreachable:
            log.warning("%s is unreachable: %s; requests fail until it answers", where, exc)
        else:
            log.warning("%s: %s", where, exc)
        return None
    _log_models(where, models, config.model_name)
    return models


async def _get_models(upstream: Upstream) -> tuple[int, bytes]:
    body = bytearray()
    async with upstream.get(MODELS_PATH) as response:
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > _MAX_ANSWER:
                break  # cut short, it reads as no model list
        return response.status, bytes(body)


def shown_models(models: list[str]) -> str:
    """The first few of ``models``, safe to log."""
    shown = ", ".join(text_value(model) for model in models[:_MAX_SHOWN])
    if len(models) > _MAX_SHOWN:
        shown += f" and {len(models) - _MAX_SHOWN} more"
    return shown or "none"


def _log_models(where: str, models: list[str], model_name: str) -> None:
    log.info("%s serves %d models: %s", where, len(models), shown_models(models))
    # With auto, the label is each request's model: there is no one name to check.
    if models and model_name != AUTO_MODEL and model_name not in models:
        log.warning(
            "--model-name %s is not a model the upstream serves: the model_name label of the "
            "proxy's series will differ from vLLM's own",
            text_value(model_name),
        )
