"""One INFO line per request, read from its record: what happened, never what was said."""

from __future__ import annotations

import logging

from aiohttp import web

from metrics_proxy import request_ids
from metrics_proxy.record import RequestRecord

log = logging.getLogger("metrics_proxy")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def log_metered(request: web.Request, record: RequestRecord) -> None:
    """The summary of a settled metered request (no prompt, completion or key in it)."""
    if not log.isEnabledFor(logging.INFO):
        return
    generation = record.generation_tokens
    log.info(
        "%s %s status=%s finished_reason=%s queue=%s inference=%s ttft=%s e2e=%s "
        "prompt_tokens=%s generation_tokens=%s request_id=%s",
        request.method,
        request.path,
        record.status,
        "rejected" if record.rejected else record.finished_reason,
        _seconds(record.queue_seconds),
        _seconds(record.inference_seconds),
        _seconds(record.ttft_seconds),
        _seconds(record.e2e_seconds),
        "-" if record.prompt_tokens is None else record.prompt_tokens,
        record.output_chunks if generation is None else generation,
        request_ids.current() or "-",  # sane: visible ASCII, and not much of it
    )
