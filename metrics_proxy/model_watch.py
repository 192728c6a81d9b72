"""--model-name auto's list of served models: the upstream's ``GET /v1/models``, read as the
proxy starts and every --model-refresh-interval seconds after (never per request). Each model
it lists gets its series; a failed read is logged and the last good list stays."""

from __future__ import annotations

import asyncio
import logging

from metrics_proxy.config import Config
from metrics_proxy.recorder import MAX_MODEL_NAME, MAX_MODELS, ProxyMetricsRecorder
from metrics_proxy.startup_check import (
    ModelListError,
    check_upstream,
    fetch_models,
    shown_models,
    upstream_where,
)
from metrics_proxy.upstream_client import Upstream

log = logging.getLogger("metrics_proxy")


class ModelWatch:
    """Keeps the recorder's models in step with the upstream's list, as it grows."""

    def __init__(self, upstream: Upstream, recorder: ProxyMetricsRecorder, config: Config) -> None:
        self._upstream = upstream
        self._recorder = recorder
        self._config = config
        self._refused = 0  # names refused series so far: a WARNING each time it grows

    async def run(self) -> None:
        """Read the list at once, with the start-up check's log lines, then on the timer.
        Nothing ends it but a cancel: a list frozen by one odd answer would be worse."""
        first = True
        while True:
            try:
                if first:
                    models = await check_upstream(self._upstream, self._config)
                else:
                    models = await self.refresh()
                if models is not None:
                    self._serve(models)
            except Exception:
                log.exception("--model-name auto: reading the model list failed; the last stays")
            first = False
            await asyncio.sleep(self._config.model_refresh_interval)

    async def refresh(self) -> list[str] | None:
        """One read of the list; None (and a WARNING with the cause) when it failed."""
        try:
            return await fetch_models(self._upstream, self._config)
        except ModelListError as exc:
            log.warning(
                "%s: cannot refresh its model list: %s; the last one stays",
                upstream_where(self._config),
                exc,
            )
            return None

    def _serve(self, models: list[str]) -> None:
        served = self._recorder.serve_models(models)
        if served.added:
            log.info(
                "--model-name auto: series for %d more models: %s",
                len(served.added),
                shown_models(list(served.added)),
            )
        if served.refused > self._refused:
            self._refused = served.refused
            log.warning(
                "--model-name auto: %d models listed by the upstream get no series of their "
                "own (over %d characters, or past %d models); their requests count as "
                'model_name="other"',
                served.refused,
                MAX_MODEL_NAME,
                MAX_MODELS,
            )
