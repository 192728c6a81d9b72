"""The terminal view of the proxy's JSON snapshot (``GET /internal/metrics``), for humans:
the full dump once, or ``--watch``, a live view that fits 80x24 and redraws in place."""

from __future__ import annotations

import argparse
import http.client
import math
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

import orjson

from metrics_proxy.live_view import live_frame
from metrics_proxy.live_view import short as _short
from metrics_proxy.live_view import short_seconds as _seconds
from metrics_proxy.tenant_table import by_tokens, tenant_totals

__all__ = [
    "SnapshotError",
    "build_parser",
    "fetch_snapshot",
    "format_snapshot",
    "histogram_bar",
    "main",
    "model_names",
    "select_families",
    "select_model",
    "shared_labels",
]

Snapshot = dict[str, Any]

WIDTH = 100  # every line of the full dump fits a 100-column terminal
# The live view draws on the terminal's alternate screen, as top and less do, so the shell's
# screen comes back as it was; the cursor is hidden meanwhile.
ENTER_SCREEN = "\x1b[?1049h\x1b[?25l"
LEAVE_SCREEN = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"  # cursor to the top left: each frame overwrites the last
ERASE_LINE = "\x1b[K"  # the rest of a line the previous frame made longer
ERASE_BELOW = "\x1b[J"  # the lines the previous frame had below this one
DEFAULT_WATCH_SECONDS = 2.0
SHARED_LABEL_NAMES = ("model_name", "engine")
_BARS = "▁▂▃▄▅▆▇█"
_EMPTY = "·"  # an empty bucket inside the range: a space would split the bar in two
_STATS = ("sum", "mean", "p50", "p90", "p99")
_NONE_YET = "(none yet)"


class SnapshotError(RuntimeError):
    """The URL gave no snapshot: unreachable, an HTTP error, or an answer not in its schema."""


# --- Formatting: snapshot dict -> text, no I/O ----------------------------------------------


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "+Inf", "-Inf" and "NaN" travel as strings
        return value
    x = float(value)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.0f}" if abs(x) >= 1e6 else f"{x:.4g}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _labels(labels: dict[str, str], hidden: Iterable[str]) -> str:
    shown = [f"{name}={value}" for name, value in labels.items() if name not in hidden]
    return "{" + ",".join(shown) + "}" if shown else ""


def select_families(snapshot: Snapshot, filters: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The families whose name contains any of ``filters`` (all of them when there are none)."""
    families: list[dict[str, Any]] = snapshot["families"]
    return [f for f in families if not filters or any(s in f["name"] for s in filters)]


def model_names(snapshot: Snapshot) -> list[str]:
    """The ``model_name`` values of the snapshot's series, in order (several with
    --model-name auto)."""
    seen: dict[str, None] = {}
    for family in snapshot["families"]:
        for sample in family["samples"]:
            model = sample.get("labels", {}).get("model_name")
            if isinstance(model, str):
                seen[model] = None
    return list(seen)


def select_model(snapshot: Snapshot, model: str | None) -> Snapshot:
    """The snapshot with only ``model``'s series, and those with no model_name (``http_*``,
    the process); all of it when ``model`` is None."""
    if model is None:
        return snapshot

    def kept(sample: dict[str, Any]) -> bool:
        labels: dict[str, str] = sample.get("labels", {})
        return labels.get("model_name", model) == model

    families = [
        {**family, "samples": [s for s in family["samples"] if kept(s)]}
        for family in snapshot["families"]
    ]
    return {**snapshot, "families": families}


def shared_labels(snapshot: Snapshot) -> dict[str, str]:
    """``model_name`` and ``engine`` where every series that has the label agrees on its value:
    printed once in the header instead of on every row."""
    seen: dict[str, set[str]] = {name: set() for name in SHARED_LABEL_NAMES}
    for family in snapshot["families"]:
        for sample in family["samples"]:
            for name, values in seen.items():
                if name in sample.get("labels", {}):
                    values.add(sample["labels"][name])
    return {name: values.pop() for name, values in seen.items() if len(values) == 1}


def histogram_bar(buckets: Sequence[Sequence[float]], count: int, *, seconds: bool = False) -> str:
    """A sparkline of per-bucket counts and the bound range it covers, e.g. ``▂█▃ (20ms, 80ms]``.

    ``buckets`` are the snapshot's cumulative ``[upper_bound, count]`` pairs; the ``+Inf``
    bucket is what ``count`` has beyond the last one. Empty buckets at both ends are trimmed.
    """
    if not buckets or count <= 0:
        return ""
    bounds = [0.0, *(float(bound) for bound, _ in buckets), math.inf]
    cumulative = [0, *(int(c) for _, c in buckets), count]
    counts = [cumulative[i + 1] - cumulative[i] for i in range(len(cumulative) - 1)]
    used = [i for i, c in enumerate(counts) if c > 0]
    first, last = used[0], used[-1]
    peak = max(counts)
    bar = "".join(
        _BARS[min(7, math.ceil(c * 8 / peak) - 1)] if c > 0 else _EMPTY
        for c in counts[first : last + 1]
    )
    show = _seconds if seconds else _short
    upper = bounds[last + 1]
    closing = "+Inf)" if upper == math.inf else f"{show(upper)}]"
    return f"{bar} ({show(bounds[first])}, {closing}"


def _value_section(title: str, families: list[dict[str, Any]], hidden: set[str]) -> list[str]:
    rows: list[tuple[str, str]] = []
    for family in families:
        if not family["samples"]:
            rows.append((family["name"], _NONE_YET))
        for sample in family["samples"]:
            key = family["name"] + _labels(sample.get("labels", {}), hidden)
            rows.append((key, _value(sample.get("value"))))
    value_width = max(len(value) for _, value in rows)
    key_width = min(max(len(key) for key, _ in rows), WIDTH - 4 - value_width)
    lines = [title]
    for key, value in rows:
        lines.append(f"  {_fit(key, key_width):<{key_width}}  {value:>{value_width}}")
    return lines


def _histogram_section(families: list[dict[str, Any]], hidden: set[str]) -> list[str]:
    heading = "".join(f"{name:>9}" for name in _STATS)
    lines = ["HISTOGRAMS", f"    {'count':>7}{heading}  distribution"]
    for family in families:
        name, seconds = family["name"], family["name"].endswith("_seconds")
        show = _seconds if seconds else _short
        if not family["samples"]:
            lines.append(f"  {name}  {_NONE_YET}")
        for sample in family["samples"]:
            lines.append(_fit(f"  {name}{_labels(sample.get('labels', {}), hidden)}", WIDTH))
            count = int(sample.get("count") or 0)
            stats = [sample.get(stat) for stat in _STATS]
            cells = "".join(f"{'-' if x is None else show(float(x)):>9}" for x in stats)
            bar = histogram_bar(sample.get("buckets") or [], count, seconds=seconds)
            lines.append(_fit(f"    {count:>7}{cells}  {bar}".rstrip(), WIDTH))
    return lines


TOP_TENANTS = 10  # rows of the tenant table; every series is in the sections above it
_TENANT_WIDTH = 26
_TENANT_COLUMNS = ("requests", "rejected", "prompt", "generation", "queue avg", "queue p90")


def _tenant_section(families: list[dict[str, Any]]) -> list[str]:
    """The busiest tenants (attribution), by tokens; nothing without tenant series."""
    rows = by_tokens(tenant_totals({f["name"]: f["samples"] for f in families}).values())
    if not rows:
        return []
    shown = f"{min(len(rows), TOP_TENANTS)} of {len(rows)}"
    heading = "".join(f"{name:>11}" for name in _TENANT_COLUMNS)
    lines = [f"TOP TENANTS by tokens ({shown})", f"  {'tenant':<{_TENANT_WIDTH}}{heading}"]
    for row in rows[:TOP_TENANTS]:
        counts = (row.requests, row.rejected, row.prompt_tokens, row.generation_tokens)
        times = (row.queue_mean, row.queue_p90)
        cells = [_value(x) for x in counts]
        cells += ["-" if t is None else _seconds(t) for t in times]
        tenant = _fit(row.tenant, _TENANT_WIDTH - 1)
        lines.append(f"  {tenant:<{_TENANT_WIDTH}}{''.join(f'{c:>11}' for c in cells)}")
    return lines


def format_snapshot(snapshot: Snapshot, filters: Sequence[str] = ()) -> str:
    """The snapshot as a text table: gauges, counters, then histograms, in snapshot order,
    and the top tenants when attribution is on.

    ``model_name``/``engine`` go once into the header when all series agree on them; seconds
    are shown in ms or µs when small.
    """
    shared = shared_labels(snapshot)
    hidden = set(shared)
    families = select_families(snapshot, filters)
    header = " ".join(f"{name}={value}" for name, value in shared.items())
    lines = [_fit(f"all series: {header}" if header else "metrics snapshot", WIDTH)]
    if not families:
        lines.append(f"no metric family name contains any of: {', '.join(filters)}")
    for kind, title in (("gauge", "GAUGES"), ("counter", "COUNTERS")):
        chosen = [f for f in families if f.get("type") == kind]
        if chosen:
            lines += ["", *_value_section(title, chosen, hidden)]
    histograms = [f for f in families if f.get("type") == "histogram"]
    if histograms:
        lines += ["", *_histogram_section(histograms, hidden)]
    tenants = _tenant_section(families)
    if tenants:
        lines += ["", *tenants]
    return "\n".join(lines) + "\n"


# --- Fetching -------------------------------------------------------------------------------


def _reason(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _is_family(family: object) -> bool:
    if not isinstance(family, dict) or not isinstance(family.get("name"), str):
        return False
    samples = family.get("samples")
    return isinstance(samples, list) and all(isinstance(sample, dict) for sample in samples)


def _check(snapshot: object, url: str) -> Snapshot:
    if isinstance(snapshot, dict):
        families = snapshot.get("families")
        if isinstance(families, list) and all(_is_family(f) for f in families):
            return snapshot
    raise SnapshotError(f"{url} answered JSON that is not a metrics snapshot (no 'families')")


def fetch_snapshot(url: str, timeout: float = 5.0) -> Snapshot:
    """GET ``url`` and return its snapshot; any failure raises :class:`SnapshotError`."""
    # No proxy from the environment, like aiohttp's default: a stray HTTP_PROXY must not
    # intercept a request to a metrics endpoint that is usually internal.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        raise SnapshotError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # urllib wraps some failures in URLError and lets others (a read timeout) through.
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(cause, TimeoutError):
            raise SnapshotError(f"no answer from {url} within {timeout:g} s") from None
        raise SnapshotError(f"cannot reach {url}: {_reason(cause)}") from None
    try:
        snapshot = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SnapshotError(f"{url} did not answer JSON: not /internal/metrics?") from None
    return _check(snapshot, url)


# --- The command ----------------------------------------------------------------------------


def _positive_seconds(text: str) -> float:
    seconds = float(text)  # argparse turns the ValueError into a usage error
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(text)
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="print_metrics", description="Show the proxy's /internal/metrics snapshot."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000/internal/metrics")
    parser.add_argument(
        "--watch",
        type=_positive_seconds,
        nargs="?",
        const=DEFAULT_WATCH_SECONDS,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C: a live "
        "view that fits 80x24, rates over the interval",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="with --watch, redraw the full dump instead (printing once always shows it)",
    )
    parser.add_argument("--json", action="store_true", help="print the raw snapshot, indented")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="only families whose name contains it (repeatable: any of them)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="only this model's series (a proxy with --model-name auto has one set per model)",
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=5.0, help="socket timeout (default 5)"
    )
    return parser


def _render(snapshot: Snapshot, args: argparse.Namespace) -> str:
    snapshot = select_model(snapshot, args.model)
    if args.json:
        selected = {**snapshot, "families": select_families(snapshot, args.filter)}
        return orjson.dumps(selected, option=orjson.OPT_INDENT_2).decode() + "\n"
    return format_snapshot(snapshot, args.filter)


class _Screen:
    """Where --watch draws: over the last frame on a terminal, never scrolling (a frame ends
    without a newline); one frame after another, plain text, anywhere else."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.terminal = out.isatty()

    def draw(self, lines: list[str]) -> None:
        if self.terminal:
            body = f"{ERASE_LINE}\n".join(lines)
            self._out.write(f"{HOME}{body}{ERASE_LINE}{ERASE_BELOW}")
        else:
            self._out.write("\n".join(lines) + "\n\n")
        self._out.flush()


@contextmanager
def _screen(out: TextIO) -> Iterator[_Screen]:
    """The alternate screen for as long as the watch lasts; the terminal as it was after it,
    however it ends (Ctrl-C, SIGTERM, an error)."""
    screen = _Screen(out)
    if screen.terminal:
        out.write(ENTER_SCREEN)
    try:
        yield screen
    finally:
        if screen.terminal:
            out.write(LEAVE_SCREEN)
            out.flush()


def _stop(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _end_on_sigterm() -> None:
    # kill and timeout end the watch as Ctrl-C does, so the terminal is given back.
    with suppress(ValueError):  # not the main thread: signals are the caller's then
        signal.signal(signal.SIGTERM, _stop)


def _frame(
    args: argparse.Namespace, now: Snapshot, before: Snapshot | None, seconds: float, status: str
) -> list[str]:
    clock = time.strftime("%H:%M:%S")
    if args.all or args.json or args.filter:
        title = f"{args.url}  every {args.watch:g}s  {clock}  Ctrl-C quits"
        return [_fit(title, WIDTH), *([status] if status else []), *_render(now, args).splitlines()]
    now = select_model(now, args.model)
    before = None if before is None else select_model(before, args.model)
    models = model_names(now)
    shown = f"model {models[0]}" if len(models) == 1 else f"{len(models)} models"
    title = f"{urlsplit(args.url).netloc}  {shown}  every {args.watch:g}s  {clock}  Ctrl-C quits"
    if not status and before is None:
        status = "(rates from the next frame on)"
    return live_frame(now, before, seconds, title, status)


def _watch(args: argparse.Namespace) -> NoReturn:
    # The first fetch fails loudly, as without --watch: the URL is probably wrong.
    snapshot, taken = fetch_snapshot(args.url, args.timeout), time.monotonic()
    previous: Snapshot | None = None
    previous_taken = taken
    status = ""
    _end_on_sigterm()
    with _screen(sys.stdout) as screen:
        while True:
            screen.draw(_frame(args, snapshot, previous, taken - previous_taken, status))
            time.sleep(args.watch)
            try:
                fresh = fetch_snapshot(args.url, args.timeout)
            except SnapshotError as exc:
                # A proxy restarting should not end the watch: say so in place, keep trying.
                status = f"print_metrics: {exc}"
                continue
            previous, previous_taken = snapshot, taken
            snapshot, taken, status = fresh, time.monotonic(), ""


def main(argv: Sequence[str] | None = None) -> int:
    """Print the snapshot once (or every ``--watch`` seconds); 1 when there is none."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scheme = urlsplit(args.url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("http", "https"):
        parser.error(f"--url must be an http:// or https:// URL, got {args.url!r}")
    try:
        if args.watch is not None:
            _watch(args)
        sys.stdout.write(_render(fetch_snapshot(args.url, args.timeout), args))
    except SnapshotError as exc:
        print(f"print_metrics: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how --watch ends
    except BrokenPipeError:
        _stdout_to_devnull()
        return 0  # the reader had enough (`| head`): not an error
    return 0


def _stdout_to_devnull() -> None:
    # Python flushes stdout again at exit; with the reader gone that flush would print a
    # second BrokenPipeError, so later writes go nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
