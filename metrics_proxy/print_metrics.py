"""The terminal view of the proxy's JSON snapshot (``GET /internal/metrics``), for humans."""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

import orjson

__all__ = [
    "SnapshotError",
    "build_parser",
    "fetch_snapshot",
    "format_snapshot",
    "histogram_bar",
    "main",
    "select_families",
    "shared_labels",
]

Snapshot = dict[str, Any]

WIDTH = 100  # every line fits a 100-column terminal
CLEAR = "\x1b[H\x1b[2J"  # cursor home, then erase the screen
SHARED_LABEL_NAMES = ("model_name", "engine")
_BARS = "▁▂▃▄▅▆▇█"
_EMPTY = "·"  # an empty bucket inside the range: a space would split the bar in two
_STATS = ("sum", "mean", "p50", "p90", "p99")
_NONE_YET = "(none yet)"


class SnapshotError(RuntimeError):
    """The URL gave no snapshot: unreachable, an HTTP error, or an answer not in its schema."""


# --- Formatting: snapshot dict -> text, no I/O ----------------------------------------------


def _short(x: float) -> str:
    # Three significant digits without ever switching to an exponent for big values.
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _seconds(x: float) -> str:
    if x == 0:
        return "0"
    if x < 1e-3:
        return f"{_short(x * 1e6)}µs"
    if x < 1:
        return f"{_short(x * 1e3)}ms"
    return f"{_short(x)}s"


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


def format_snapshot(snapshot: Snapshot, filters: Sequence[str] = ()) -> str:
    """The snapshot as a text table: gauges, counters, then histograms, in snapshot order.

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
        "--watch", type=_positive_seconds, metavar="SECONDS", help="refresh until Ctrl-C"
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
        "--timeout", type=_positive_seconds, default=5.0, help="socket timeout (default 5)"
    )
    return parser


def _render(snapshot: Snapshot, args: argparse.Namespace) -> str:
    if args.json:
        selected = {**snapshot, "families": select_families(snapshot, args.filter)}
        return orjson.dumps(selected, option=orjson.OPT_INDENT_2).decode() + "\n"
    return format_snapshot(snapshot, args.filter)


def _watch(args: argparse.Namespace) -> NoReturn:
    # The first fetch fails loudly, as without --watch: the URL is probably wrong.
    frame = _render(fetch_snapshot(args.url, args.timeout), args)
    while True:
        title = f"{args.url}  every {args.watch:g}s  {time.strftime('%H:%M:%S')}  Ctrl-C quits"
        sys.stdout.write(f"{CLEAR}{_fit(title, WIDTH)}\n{frame}")
        sys.stdout.flush()
        time.sleep(args.watch)
        try:
            frame = _render(fetch_snapshot(args.url, args.timeout), args)
        except SnapshotError as exc:
            # A proxy restarting should not end the watch: say so in place and keep trying.
            frame = f"print_metrics: {exc}\n"


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
