"""Text (Prometheus 0.0.4) and JSON rendering of collected families: pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import orjson

from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.prometheus.samples import HistogramValue, LabelPairs, MetricFamily
from metrics_proxy.prometheus.snapshot import snapshot_dict
from metrics_proxy.prometheus.text_parser import TextFamily

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_JSON = "application/json"


def format_value(value: float) -> str:
    """A number the way prometheus_client (and so vLLM) prints it: Python's repr, but
    switching to Go's exponent form for large positives (``1e+06``, ``1.7957283234968863e+09``),
    and ``+Inf``/``-Inf``/``NaN``."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        # The "+0" is prometheus_client's: 1e10 prints as "1e+010". Matched for parity.
        return f"{mantissa}e+0{dot - 1}"
    return text


def _format_count(count: int) -> str:
    # Bucket counts are ints; this is format_value(float(count)) without the float detour.
    return f"{count}.0" if count < 1_000_000 else format_value(float(count))


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@lru_cache(maxsize=4096)
def _label_text(labels: LabelPairs, extra: tuple[str, str] | None = None) -> str:
    """``{a="x",b="y"}`` with names sorted, as prometheus_client prints them; ``extra``
    (the ``le`` label) takes its sorted place. Cached: series are few and long-lived."""
    pairs = sorted((*labels, extra) if extra else labels)
    if not pairs:
        return ""
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}"


@lru_cache(maxsize=512)
def _bucket_label_texts(labels: LabelPairs, bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(_label_text(labels, ("le", format_value(bound))) for bound in bounds)


@dataclass(frozen=True, slots=True)
class RenderedFamily:
    """A family read from another exposition, its lines formatted once (see ``pre_render``):
    ``head`` its HELP and TYPE lines, ``body`` its sample lines, joined by newlines."""

    name: str
    head: str
    body: str


def pre_render(families: Iterable[TextFamily]) -> tuple[RenderedFamily, ...]:
    """Families read from another exposition, formatted for ``render_text``: once per read of
    that exposition, not once per scrape."""
    return tuple(
        RenderedFamily(
            family.name,
            f"# HELP {family.name} {escape_help(family.help)}\n# TYPE {family.name} {family.type}",
            "\n".join(
                f"{s.name}{_uncached_label_text(s.labels)} {format_value(s.value)}"
                for s in family.samples
            ),
        )
        for family in families
    )


def render_text(
    source: Registry | Iterable[MetricFamily], foreign: Sequence[RenderedFamily] = ()
) -> bytes:
    """The Prometheus text format 0.0.4, as vLLM's /metrics prints it (no ``_created``),
    of a registry's families or of families already collected.

    ``foreign`` are families read from another exposition (``pre_render``), already cleared
    of clashes with ``source``: one that shares a name with a family of ``source`` adds its
    samples to that family's block (one HELP and TYPE for both); the others follow, each in
    its own block."""
    families = source.collect() if isinstance(source, Registry) else source
    joining = {family.name: family for family in foreign}
    lines: list[str] = []
    append = lines.append
    for family in families:
        name = family.name
        append(f"# HELP {name} {escape_help(family.help)}")
        append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            value = sample.value
            if isinstance(value, HistogramValue):
                bucket_labels = _bucket_label_texts(sample.labels, value.upper_bounds)
                for label_text, count in zip(bucket_labels, value.cumulative_counts, strict=True):
                    append(f"{name}_bucket{label_text} {_format_count(count)}")
                label_text = _label_text(sample.labels)
                append(f"{name}_count{label_text} {_format_count(value.count)}")
                append(f"{name}_sum{label_text} {format_value(value.sum)}")
            else:
                append(f"{name}{_label_text(sample.labels)} {format_value(value)}")
        if joining and (joined := joining.pop(name, None)) and joined.body:
            append(joined.body)
    for rest in joining.values():
        append(rest.head)
        if rest.body:
            append(rest.body)
    append("")
    return "\n".join(lines).encode()


def _uncached_label_text(labels: LabelPairs) -> str:
    # Not through _label_text's cache: another process's series must not push ours out.
    if not labels:
        return ""
    pairs = sorted(labels)
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in pairs) + "}"


def render_json(source: Registry | Iterable[MetricFamily]) -> bytes:
    """The JSON snapshot (a registry's, or of families already collected) as bytes."""
    snapshot = source.snapshot() if isinstance(source, Registry) else snapshot_dict(source)
    return orjson.dumps(snapshot)
