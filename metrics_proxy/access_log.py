"""What the log says about requests: one line per metered request, read from its record; one
per request the proxy refuses itself; one per upstream failure on any other path. What
happened, never what was said: no prompt, completion, key or upstream body in it."""

from __future__ import annotations

import logging
from functools import partial

from aiohttp import web

from metrics_proxy import request_ids
from metrics_proxy.families import ErrorKind
from metrics_proxy.log_format import Line, text_value, write, write_later
from metrics_proxy.record import RequestRecord

log = logging.getLogger("metrics_proxy")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _line(
    request: web.Request, prefix: str, fields: dict[str, object], request_id: str | None
) -> Line:
    """``prefix`` + ``METHOD /path`` and the fields, the request id last."""
    method, path = request.method, request.path
    fields["request_id"] = request_id
    return Line(f"{prefix}{method} {text_value(path)}", fields, {"method": method, "path": path})


def log_metered(
    request: web.Request,
    record: RequestRecord,
    *,
    cause: str | None = None,
    reason: str | None = None,
) -> None:
    """The summary of a metered request: at INFO, or at WARNING with the ``cause`` of the
    upstream's failure; ``reason``: why the proxy refused it. A settled record no longer
    changes, so its line is made when it is written (see log_format.write_later)."""
    level = logging.INFO if cause is None else logging.WARNING
    if not log.isEnabledFor(level):
        return
    make = partial(_metered_line, request, record, request_ids.current(), cause, reason)
    if record.settled:
        write_later(log, level, make)
    else:  # held (a background response): its record still changes
        write(log, level, make())


def _metered_line(
    request: web.Request,
    record: RequestRecord,
    request_id: str | None,
    cause: str | None,
    reason: str | None,
) -> Line:
    generation = record.generation_tokens
    fields: dict[str, object] = {
        "status": record.status,
        "finished_reason": "rejected" if record.rejected else record.finished_reason,
        "queue_ms": _ms(record.queue_seconds),
        "inference_ms": _ms(record.inference_seconds),
        "ttft_ms": _ms(record.ttft_seconds),
        "e2e_ms": _ms(record.e2e_seconds),
        "prompt_tokens": record.prompt_tokens,
        "generation_tokens": record.output_chunks if generation is None else generation,
    }
    if record.tenant is not None:  # as read: a gateway's name, or a key's tag, never a key
        fields["tenant"] = record.tenant
    if cause is not None:
        fields["error"] = record.error_kind or ErrorKind.UPSTREAM_STATUS
        fields["cause"] = cause
    if reason is not None:
        fields["reason"] = reason
    return _line(request, "", fields, request_id)


def log_refusal(request: web.Request, status: int, reason: str) -> None:
    """A request the proxy answered itself, without the upstream: INFO, with its reason."""
    if log.isEnabledFor(logging.INFO):
        fields: dict[str, object] = {"status": status, "reason": reason}
        write(log, logging.INFO, _line(request, "refused ", fields, request_ids.current()))


def log_upstream_failure(request: web.Request, status: int, kind: ErrorKind, cause: str) -> None:
    """A forwarded (unmetered) request the upstream failed: WARNING, with the cause."""
    if log.isEnabledFor(logging.WARNING):
        fields: dict[str, object] = {"status": status, "error": kind, "cause": cause}
        write(log, logging.WARNING, _line(request, "", fields, request_ids.current()))
