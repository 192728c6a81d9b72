"""The Prometheus text format 0.0.4 read into families: pure, bounded, and never raising on
what it reads. A line it cannot take whole is skipped and counted, never half-read.

>>> parsed = parse_text(b'# TYPE up gauge\\nup{job="a"} 1\\n')
>>> parsed.families[0].samples[0]
TextSample(name='up', labels=(('job', 'a'),), value=1.0)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, Literal

from metrics_proxy.prometheus.samples import LabelPairs

TextType = Literal["counter", "gauge", "histogram", "summary", "untyped"]
_TYPES: Final = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})

METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Go's ParseFloat as the format uses it, without what Python's float() also takes ("1_0",
# "infinity", surrounding spaces).
_VALUE: Final = re.compile(r"[+-]?(?:Inf|inf|NaN|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
# A sample line: its name, the label set between its braces (quoted values may hold braces),
# its value and perhaps a timestamp (not kept: the proxy's scrape is the sample's time).
# Possessive (Python 3.11): a line that does not match fails in linear time, not exponential.
_SAMPLE_LINE: Final = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"{}]++|"(?:[^"\\]++|\\.)*+")*+)\})?'
    r"[ \t]+([+-]?(?:Inf|inf|NaN|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?))"
    r"(?:[ \t]+-?\d+)?[ \t]*"
)
# "# HELP name text" and "# TYPE name type"; the text keeps its trailing blanks.
_DESCRIPTOR: Final = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?")
_LABEL_ESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n"}
# One name="value" pair and the comma after it, if any; the value still escaped.
_LABEL_PAIR: Final = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(,?)'
)
_ESCAPE: Final = re.compile(r"\\(.)")
# The samples each type may hold besides its own name, by suffix.
_SUFFIXES: Final[dict[str, tuple[str, ...]]] = {
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one exposition may cost: the bytes read, one line's length, and the
    series kept (past it, the rest are skipped)."""

    max_bytes: int = 8 * 1024 * 1024
    max_line: int = 64 * 1024
    max_series: int = 50_000


@dataclass(frozen=True, slots=True)
class TextSample:
    """One series as written: its sample name (``x_bucket`` for a histogram ``x``), its labels
    in the order written, and its value (a timestamp, if any, is not kept)."""

    name: str
    labels: LabelPairs
    value: float


@dataclass(frozen=True, slots=True)
class TextFamily:
    """A family as read: ``untyped`` when no ``# TYPE`` came before its first sample."""

    name: str
    type: TextType
    help: str
    samples: tuple[TextSample, ...]


@dataclass(frozen=True, slots=True)
class ParsedText:
    """What a text held: its families in the order first seen, the lines skipped, and
    whether a limit cut it short."""

    families: tuple[TextFamily, ...]
    skipped_lines: int = 0
    truncated: bool = False


@dataclass(slots=True)
class _Family:
    name: str
    type: TextType = "untyped"
    typed: bool = False
    help: str | None = None
    samples: list[TextSample] = field(default_factory=list)
    series: set[tuple[str, LabelPairs]] = field(default_factory=set)


class _SkipLine(ValueError):
    """This line is not taken."""


def parse_text(text: bytes, limits: Limits = Limits()) -> ParsedText:
    """Every family of ``text``; what breaks the format or a limit is skipped and counted."""
    reader = _Reader(limits)
    truncated = len(text) > limits.max_bytes
    if truncated:  # only whole lines of the first max_bytes
        text = text[: text.rfind(b"\n", 0, limits.max_bytes) + 1]
    for raw in text.split(b"\n"):
        reader.feed(raw)
    return reader.result(truncated)


class _Reader:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.families: dict[str, _Family] = {}
        self.series = 0
        self.skipped = 0
        self.over_limit = False

    def feed(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            if len(raw) > self.limits.max_line:
                raise _SkipLine("line too long")
            line = raw.decode().removesuffix("\r")
            if line.startswith("#"):
                self._comment(line)
            else:
                self._sample(line)
        except (_SkipLine, UnicodeDecodeError):
            self.skipped += 1

    def result(self, truncated: bool) -> ParsedText:
        families = []
        # Every name a family printed so far answers to: no later family may print one, or
        # a reader would take its samples (or its TYPE) for that family's.
        claimed: set[str] = set()
        for family in self.families.values():
            if family.name in claimed:
                self.skipped += len(family.samples)
                continue
            samples = [s for s in family.samples if s.name not in claimed]
            self.skipped += len(family.samples) - len(samples)
            claimed.update(names_of(family.name, family.type))
            if samples:
                help_text = family.help or ""
                families.append(TextFamily(family.name, family.type, help_text, tuple(samples)))
        return ParsedText(tuple(families), self.skipped, truncated or self.over_limit)

    def _comment(self, line: str) -> None:
        match = _DESCRIPTOR.fullmatch(line)
        if match is None:
            return  # any other comment means nothing
        keyword, name, rest = match.group(1), match.group(2), match.group(3) or ""
        if not METRIC_NAME.fullmatch(name):
            raise _SkipLine("bad metric name")
        known = self.families.get(name)
        if keyword == "HELP":
            if known is not None and known.help is not None:
                raise _SkipLine("second HELP")
            self._family(name).help = unescape_help(rest)
            return
        kind = rest.strip()
        # A TYPE after the family's samples or a second TYPE: the samples were read as
        # they were typed then, so the family stays as it was.
        if kind not in _TYPES or (known is not None and (known.samples or known.typed)):
            raise _SkipLine("bad, late or second TYPE")
        family = self._family(name)
        family.type, family.typed = kind, True  # type: ignore[assignment]  # one of _TYPES

    def _family(self, name: str) -> _Family:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _Family(name)
        return family

    def _sample(self, line: str) -> None:
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise _SkipLine("not a sample line")
        name, label_text, value_text = match.groups()
        labels = parse_labels(label_text) if label_text else ()
        value = float(value_text)
        value = math.nan if value != value else value  # one NaN, whatever its sign
        family = self._owner(name, labels)
        key = (name, tuple(sorted(labels)))
        if key in family.series:
            raise _SkipLine("duplicate series")
        if self.series >= self.limits.max_series:
            self.over_limit = True
            raise _SkipLine("too many series")
        self.series += 1
        family.series.add(key)
        family.samples.append(TextSample(name, labels, value))

    def _owner(self, name: str, labels: LabelPairs) -> _Family:
        """The family a sample belongs to: its own name's, else a histogram's or summary's
        that it is a part of, else a new untyped one."""
        for suffix in ("_bucket", "_count", "_sum"):
            base = self.families.get(name.removesuffix(suffix)) if name.endswith(suffix) else None
            if base is not None and suffix in _SUFFIXES.get(base.type, ()):
                if suffix == "_bucket" and not _valid_le(labels):
                    raise _SkipLine("bucket without a valid le")
                return base
        family = self._family(name)
        if family.type == "histogram" or (
            family.type == "summary" and not any(k == "quantile" for k, _ in labels)
        ):
            raise _SkipLine("histogram or summary sample without its suffix")
        return family


def names_of(name: str, kind: TextType) -> tuple[str, ...]:
    """Every name a family of this type answers to: its own, and its parts' (a reader of
    the format takes ``x_sum`` for a part of ``x`` when ``x`` is a histogram or summary)."""
    return (name, *(name + suffix for suffix in _SUFFIXES.get(kind, ())))


def _valid_le(labels: LabelPairs) -> bool:
    bounds = [value for name, value in labels if name == "le"]
    return len(bounds) == 1 and _VALUE.fullmatch(bounds[0]) is not None


# Label sets longer than this are parsed each time: the cache holds an engine's ordinary label
# sets, never 8192 hostile 64 KiB ones (half a GiB that would live as long as the process).
_CACHED_LABELS_UP_TO = 512


def parse_labels(text: str) -> LabelPairs:
    """The label set written between braces (``a="x",b="y"``). Escapes are exactly the
    format's three (``\\\\``, ``\\"``, ``\\n``); any other, a repeated or reserved
    (``__``) name, or a missing quote rejects the line. Cached up to a size: an engine prints
    the same label sets at every fetch."""
    if len(text) <= _CACHED_LABELS_UP_TO:
        return _parse_labels_cached(text)
    return _parse_labels(text)


def _parse_labels(text: str) -> LabelPairs:
    pairs: list[tuple[str, str]] = []
    i = 0
    while (pair := _LABEL_PAIR.match(text, i)) is not None:
        name, value, comma = pair.groups()
        if name.startswith("__"):
            raise _SkipLine("reserved label name")
        pairs.append((name, _unescape_label_value(value) if "\\" in value else value))
        i = pair.end()
        if not comma:
            break
    if text[i:].strip(" \t"):
        raise _SkipLine("bad label set")
    if len({name for name, _ in pairs}) != len(pairs):
        raise _SkipLine("a label given twice")
    return tuple(pairs)


_parse_labels_cached = lru_cache(maxsize=8192)(_parse_labels)


def _unescape_label_value(raw: str) -> str:
    if any(escape.group(1) not in _LABEL_ESCAPES for escape in _ESCAPE.finditer(raw)):
        raise _SkipLine("invalid escape in a label value")
    return _ESCAPE.sub(lambda escape: _LABEL_ESCAPES[escape.group(1)], raw)


def unescape_help(text: str) -> str:
    """HELP text as meant: ``\\\\`` and ``\\n`` are its only escapes; any other backslash is
    itself, as Prometheus reads it."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("\\\\", "\\n"):
            out.append("\\" if pair == "\\\\" else "\n")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
