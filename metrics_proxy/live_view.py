"""The live view of ``print_metrics --watch``: the figures an operator reads first, in 80x24.

Pure: two snapshots of ``GET /internal/metrics`` and the seconds between them in, lines out.
Rates are counter deltas over that interval (a counter that went back, a restarted proxy,
counts from zero); latency quantiles are the snapshot's own over its recent window, the
quantile sketch's last minute. The first frame has no interval yet: its rates are ``-``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metrics_proxy.tenant_table import TenantTotals, by_tokens, tenant_totals

__all__ = ["HEIGHT", "WIDTH", "busiest_model", "live_frame", "short", "short_seconds"]

WIDTH = 80
HEIGHT = 24  # the frame takes at most HEIGHT - 1 lines: the last newline would scroll

Snapshot = dict[str, Any]
Row = tuple[str, float | None, float]  # label, per second (None: no interval yet), total

# (row label, family) for the latency block, in the order an operator reads them.
LATENCIES = (
    ("TTFT", "vllm:time_to_first_token_seconds"),
    ("ITL", "vllm:inter_token_latency_seconds"),
    ("e2e", "vllm:e2e_request_latency_seconds"),
    ("queue", "vllm:request_queue_time_seconds"),
)
# Outcomes always shown; another (repetition) once it happened.
_OUTCOMES = ("stop", "length", "abort", "error")
_LIMIT = 5  # rows of outcomes, and of error kinds: more are summed into one
# Column widths: label, per second, total; the right-hand block starts at _LEFT.
_LEFT_LABEL, _RIGHT_LABEL, _RATE, _TOTAL = 22, 14, 8, 8
_LEFT = 2 + _LEFT_LABEL + _RATE + _TOTAL + 3


def short(x: float) -> str:
    """Three significant digits, never an exponent for big values."""
    # From 999.5 up, three significant digits would round to "1e+03".
    return f"{x:.0f}" if abs(x) >= 999.5 else f"{x:.3g}"


def short_seconds(x: float) -> str:
    """Seconds in s, ms or µs, three significant digits."""
    if x == 0:
        return "0"
    if x < 1e-3:
        return f"{short(x * 1e6)}µs"
    if x < 1:
        return f"{short(x * 1e3)}ms"
    return f"{short(x)}s"


def _compact(x: float) -> str:
    # At most 6 characters: 999999, then 1M, 1.23M, 123G... (never 1e+03M).
    if abs(x) < 999_999.5:
        return short(x) if x != int(x) else str(int(x))
    for suffix, scale in (("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if abs(x) < scale * 999.5 or suffix == "T":
            return f"{x / scale:.3g}{suffix}"
    raise AssertionError("unreachable")


def _families(snapshot: Snapshot) -> dict[str, list[dict[str, Any]]]:
    return {family["name"]: family["samples"] for family in snapshot["families"]}


def _by_label(samples: Iterable[dict[str, Any]], label: str) -> dict[str, float]:
    """Counter values summed per value of ``label``, in the snapshot's order."""
    totals: dict[str, float] = {}
    for sample in samples:
        key = sample.get("labels", {}).get(label, "")
        value = sample.get("value")
        totals[key] = totals.get(key, 0.0) + (value if isinstance(value, int | float) else 0.0)
    return totals


@dataclass(frozen=True)
class _Interval:
    """The current snapshot, and the previous one with the seconds since, when there is one."""

    current: dict[str, list[dict[str, Any]]]
    previous: dict[str, list[dict[str, Any]]] | None
    seconds: float

    def rows(self, name: str, label: str) -> list[Row]:
        """(label value, per second, total) for each value of ``label`` in counter ``name``."""
        totals = _by_label(self.current.get(name, []), label)
        before = None if self.previous is None else _by_label(self.previous.get(name, []), label)
        return [(key, self._rate(total, before, key), total) for key, total in totals.items()]

    def _rate(self, total: float, before: dict[str, float] | None, key: str) -> float | None:
        if before is None or self.seconds <= 0:
            return None
        delta = total - before.get(key, 0.0)
        return (delta if delta >= 0 else total) / self.seconds

    def total(self, label: str, name: str) -> Row:
        return _summed(label, self.rows(name, ""))

    def gauge(self, name: str) -> float:
        return sum(_by_label(self.current.get(name, []), "").values())


def _summed(label: str, rows: list[Row]) -> Row:
    rates = [rate for _, rate, _ in rows]
    rate = None if None in rates else sum(r for r in rates if r is not None)
    return (label, rate, sum(total for _, _, total in rows))


def _capped(rows: list[Row]) -> list[Row]:
    if len(rows) <= _LIMIT:
        return rows
    rest = rows[_LIMIT - 1 :]
    return [*rows[: _LIMIT - 1], _summed(f"({len(rest)} more)", rest)]


def _label(text: str, width: int) -> str:
    return f"{text:<{width}}" if len(text) <= width else text[: width - 1] + "…"


def _row(label: str, rate: float | None, total: float, width: int) -> str:
    shown = "-" if rate is None else _compact(rate)
    return f"  {_label(label, width)}{shown:>{_RATE}}{_compact(total):>{_TOTAL + 1}}"


def _heading(title: str, width: int) -> str:
    return f"{title:<{width + 2}}{'/s':>{_RATE}}{'total':>{_TOTAL + 1}}"


def _side_by_side(left: list[str], right: list[str]) -> list[str]:
    height = max(len(left), len(right))
    left += [""] * (height - len(left))
    right += [""] * (height - len(right))
    return [f"{a:<{_LEFT}}{b}".rstrip() for a, b in zip(left, right, strict=True)]


def _gauge_row(label: str, value: float) -> str:
    return f"  {label:<{_RIGHT_LABEL}}{_compact(value):>{_RATE}}"


def _requests_block(interval: _Interval) -> list[str]:
    outcomes = interval.rows("vllm:request_success_total", "finished_reason")
    outcomes = _capped([row for row in outcomes if row[0] in _OUTCOMES or row[2] > 0])
    outcomes.append(interval.total("rejected", "vllm:admission_rejections_total"))
    left = [_heading("REQUESTS", _LEFT_LABEL), _row(*_summed("all", outcomes), _LEFT_LABEL)]
    left += [_row(*row, _LEFT_LABEL) for row in outcomes]
    right = [
        _heading("TOKENS", _RIGHT_LABEL),
        _row(*interval.total("prompt", "vllm:prompt_tokens_total"), _RIGHT_LABEL),
        _row(*interval.total("generation", "vllm:generation_tokens_total"), _RIGHT_LABEL),
        "",
        "IN FLIGHT",
        _gauge_row("running", interval.gauge("vllm:num_requests_running")),
        _gauge_row("waiting", interval.gauge("vllm:num_requests_waiting")),
    ]
    return _side_by_side(left, right)


def _recent_count(sample: dict[str, Any]) -> float:
    recent = sample.get("recent")
    count = recent.get("count") if isinstance(recent, dict) else None
    return count if isinstance(count, int | float) else 0


def busiest_model(current: dict[str, list[dict[str, Any]]]) -> str | None:
    """With several models (--model-name auto), the one with the most requests over the
    recent window (e2e): the latency block shows its quantiles, which cannot be merged.
    None with one model or none."""
    samples = current.get(LATENCIES[2][1], [])
    models: list[tuple[str, float]] = [
        (str(s.get("labels", {}).get("model_name")), _recent_count(s)) for s in samples
    ]
    if len({model for model, _ in models}) < 2:
        return None
    # max keeps the first of equals: the snapshot's order, "other" first.
    return max(models, key=lambda pair: pair[1])[0]


def _latency_block(interval: _Interval) -> list[str]:
    lines: list[str] = []
    window = None
    model = busiest_model(interval.current)
    for row_label, name in LATENCIES:
        samples = interval.current.get(name) or [{}]
        label = row_label
        if model is not None:
            samples = [s for s in samples if s.get("labels", {}).get("model_name") == model]
            samples = samples or [{}]
            label = _label(f"{row_label} {model}", _LEFT_LABEL)
        recent = samples[0].get("recent")
        if isinstance(recent, dict):
            window = recent.get("seconds", window)
        cells = [
            "-" if not isinstance(x, int | float) else short_seconds(float(x))
            for x in ((recent or {}).get(p) for p in ("p50", "p90", "p99"))
        ]
        count = (recent or {}).get("count")
        shown = _compact(count) if isinstance(count, int | float) else "-"
        lines.append(
            f"  {label:<{_LEFT_LABEL}}{''.join(f'{c:>{_RATE + 1}}' for c in cells)}{shown:>10}"
        )
    span = f"last {window:g} s" if isinstance(window, int | float) else "recent"
    quantiles = "".join(f"{p:>{_RATE + 1}}" for p in ("p50", "p90", "p99"))
    heading = f"{'LATENCY, ' + span:<{_LEFT_LABEL + 2}}{quantiles}{'count':>10}"
    return [heading, *lines]


def _errors_block(interval: _Interval) -> list[str]:
    errors = _capped([row for row in interval.rows("proxy_errors_total", "kind") if row[2] > 0])
    left = [_heading("ERRORS", _LEFT_LABEL)]
    left += [_row(*row, _LEFT_LABEL) for row in errors] or ["  none"]
    stages = interval.rows("proxy_client_disconnects_total", "stage")
    right = [_heading("DISCONNECTS", _RIGHT_LABEL), *(_row(*s, _RIGHT_LABEL) for s in stages)]
    return _side_by_side(left, right)


# A tenant's row: its totals, tokens/s, requests/s, mean wait for a slot.
_TenantRow = tuple[TenantTotals, float | None, float | None, float | None]


def _tenant_row(row: TenantTotals, old: TenantTotals | None, seconds: float) -> _TenantRow:
    """``row`` over the interval since ``old`` (None: no interval yet, totals only). A
    counter that went back (a restarted proxy) counts from zero."""
    if old is None or seconds <= 0:
        return (row, None, None, row.queue_mean)
    tokens, requests = row.tokens - old.tokens, row.requests - old.requests
    queued = row.queued - old.queued
    waited = row.queue_seconds - old.queue_seconds
    return (
        row,
        (tokens if tokens >= 0 else row.tokens) / seconds,
        (requests if requests >= 0 else row.requests) / seconds,
        waited / queued if queued > 0 else None,
    )


def _tenant_rows(interval: _Interval) -> list[_TenantRow]:
    """Every tenant, busiest first: by tokens/s over the interval (by total tokens before
    there is one)."""
    now = by_tokens(tenant_totals(interval.current).values())
    before = None if interval.previous is None else tenant_totals(interval.previous)
    rows = [
        _tenant_row(
            row,
            None if before is None else before.get(row.tenant, TenantTotals(row.tenant)),
            interval.seconds,
        )
        for row in now
    ]
    return sorted(rows, key=lambda found: -(found[1] or 0.0))


def _tenants_block(tenants: list[_TenantRow], rows: int) -> list[str]:
    """The busiest ``rows`` tenants (attribution): tokens and requests per second, tokens
    since start, mean wait for a slot over the interval."""
    heading = f"{f'TENANTS ({len(tenants)})':<{_LEFT_LABEL + 2}}"
    heading += f"{'tok/s':>{_RATE}}{'req/s':>{_RATE + 1}}{'tokens':>{_TOTAL + 1}}{'queue':>10}"
    lines = [heading]
    for row, tokens, requests, queue in tenants[:rows]:
        cells = ["-" if x is None else _compact(x) for x in (tokens, requests)]
        waited = "-" if queue is None else short_seconds(queue)
        lines.append(
            f"  {_label(row.tenant, _LEFT_LABEL)}{cells[0]:>{_RATE}}{cells[1]:>{_RATE + 1}}"
            f"{_compact(row.tokens):>{_TOTAL + 1}}{waited:>10}"
        )
    return lines


def live_frame(
    current: Snapshot, previous: Snapshot | None, seconds: float, title: str, status: str = ""
) -> list[str]:
    """The frame: ``title``, a ``status`` line, then requests by outcome, tokens and in-flight
    gauges (summed over models), latency quantiles over the recent window (of the busiest
    model, named on each row, when there are several), errors and disconnects, and the busiest
    tenants when attribution is on. Rates are over the ``seconds`` between ``previous`` and
    ``current``. At most WIDTH columns and HEIGHT - 1 lines."""
    interval = _Interval(
        _families(current), None if previous is None else _families(previous), seconds
    )
    blocks = [_requests_block(interval), _latency_block(interval), _errors_block(interval)]
    room = HEIGHT - 1 - 2 - sum(map(len, blocks))
    tenants = _tenant_rows(interval)
    blanks, rows = _tenant_room(room, len(tenants))
    if tenants:
        blocks.append(_tenants_block(tenants, rows))
    lines = [title, status, *blocks[0]]
    for place, block in enumerate(blocks[1:]):
        lines += ["", *block] if place < blanks else block
    return [_fit(line) for line in lines[: HEIGHT - 1]]


def _tenant_room(room: int, tenants: int) -> tuple[int, int]:
    """How many blank lines go between blocks, and how many tenants' rows fit, in ``room``
    lines. The tenants (attribution on) get two rows before the blank before them, and at
    least one row before any blank line."""
    if not tenants:
        return 2, 0
    for blanks in (3, 2):
        rows = room - blanks - 1  # the heading
        if rows >= min(tenants, 2):
            return blanks, rows
    return 0, max(1, room - 1)


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"
