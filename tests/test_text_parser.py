"""The text format parser: vLLM's real output read back exactly, hostile input skipped line
by line and counted, and whatever it reads re-rendered as a valid exposition."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from metrics_proxy.prometheus import pre_render, render_text
from metrics_proxy.prometheus.text_parser import (
    Limits,
    ParsedText,
    TextFamily,
    TextSample,
    parse_text,
)
from tests.support.tools import promtool_problems

VLLM = (Path(__file__).parent / "data" / "vllm_0.33_exposition.txt").read_bytes()


def _only(text: bytes) -> TextFamily:
    parsed = parse_text(text)
    (family,) = parsed.families
    return family


def _values(text: bytes) -> list[float]:
    return [s.value for f in parse_text(text).families for s in f.samples]


def _rendered(parsed: ParsedText) -> bytes:
    return render_text((), pre_render(parsed.families))


def test_vllms_own_output_reads_back_byte_for_byte() -> None:
    parsed = parse_text(VLLM)
    assert parsed.skipped_lines == 0
    assert not parsed.truncated
    assert len(parsed.families) == 72
    # The first line is a comment, which means nothing and is not kept.
    assert _rendered(parsed) == VLLM.split(b"\n", 1)[1].rstrip(b"\n") + b"\n"


def test_histograms_hold_their_buckets_count_and_sum() -> None:
    family = next(f for f in parse_text(VLLM).families if f.name == "vllm:request_num_preemptions")
    assert family.type == "histogram"
    assert [s.name.rsplit("_", 1)[1] for s in family.samples] == ["bucket"] * 8 + ["count", "sum"]
    assert dict(family.samples[7].labels)["le"] == "+Inf"


def test_label_values_are_unescaped_exactly() -> None:
    family = _only(b'm{a="back\\\\slash",b="quote\\"",c="new\\nline",d="caf\xc3\xa9 , }"} 1\n')
    assert dict(family.samples[0].labels) == {
        "a": "back\\slash",
        "b": 'quote"',
        "c": "new\nline",
        "d": "café , }",
    }
    assert _rendered(parse_text(_rendered(parse_text(b'm{a="x\\\\\\"\\n"} 1\n')))).startswith(
        b'# HELP m \n# TYPE m untyped\nm{a="x\\\\\\"\\n"} 1.0'
    )


@pytest.mark.parametrize(
    "line",
    [
        b'm{a="\\t"} 1',  # an escape the format does not have
        b'm{a="x\\"} 1',  # the closing quote escaped away
        b'm{a="x} 1',
        b"m{a=x} 1",
        b'm{a="x" b="y"} 1',
        b'm{a="x",a="y"} 1',  # a label twice
        b'm{__name__="x"} 1',  # reserved
        b'm{1a="x"} 1',
        b'm{a="x"',
        b"1m 1",
        b"m-x 1",
        b"m",
        b"m 1 2 3",
        b"m 1_000",  # Python's float() takes it, the format does not
        b"m infinity",
        b"m 0x10",
        b"m 1 1.5",  # a timestamp is an integer
        b'm{a="x"}1',
        b'm{"quoted.name"} 1',  # UTF-8 names are not the 0.0.4 format
        b"m \xff",
        b'm{a="\xff"} 1',
        # Long lines that fail late: linear time, not a regular expression's blow-up.
        b"m{" + b"a" * 60000 + b" 1",
        b'm{a="' + b"x" * 60000 + b" 1",
        b"m{" + b'a="b",' * 8000 + b" 1",
    ],
    ids=lambda line: repr(line[:24]) + f"({len(line)})",
)
def test_a_broken_line_is_skipped_and_counted(line: bytes) -> None:
    parsed = parse_text(b"ok 1\n" + line + b"\nok2 2\n")
    assert parsed.skipped_lines == 1
    assert [f.name for f in parsed.families] == ["ok", "ok2"]


def test_special_values_and_timestamps() -> None:
    values = _values(b"a NaN\nb +Inf\nc -Inf\nd -nan\ne 1e+06\nf .5\ng 3 1700000000000\nh -0.0\n")
    assert math.isnan(values[0])
    assert math.isnan(values[3])
    assert values[1:3] == [math.inf, -math.inf]
    assert values[4:] == [1e6, 0.5, 3.0, -0.0]
    text = _rendered(parse_text(b"a NaN\nb +Inf\nc -Inf\n"))
    assert b"a NaN\n" in text
    assert b"b +Inf\n" in text
    assert b"c -Inf\n" in text


def test_a_duplicate_series_keeps_the_first() -> None:
    parsed = parse_text(b'm{a="1",b="2"} 1\nm{b="2",a="1"} 2\nm{a="1"} 3\n')
    assert parsed.skipped_lines == 1
    assert [s.value for s in parsed.families[0].samples] == [1.0, 3.0]


def test_help_and_type_in_any_order_and_a_late_type_ignored() -> None:
    parsed = parse_text(
        b"# TYPE a counter\n# HELP a two\\nlines and a \\\\ and \\x\na_total 1\na 2\n"
        b"b 1\n# TYPE b gauge\n# TYPE a gauge\n# HELP a again\n# just a comment\n#\n"
    )
    a, a_total, b = parsed.families
    assert a_total.name == "a_total"
    assert a_total.type == "untyped"
    assert (a.name, a.type, a.help) == ("a", "counter", "two\nlines and a \\ and \\x")
    assert [s.name for s in a.samples] == ["a"]  # a_total is a family of its own
    assert b.type == "untyped"  # its TYPE came after its samples
    assert parsed.skipped_lines == 3  # late TYPE, second TYPE, second HELP


def test_a_help_keeps_trailing_blanks() -> None:
    assert _only(b"# HELP m made by   \n# TYPE m gauge\nm 1\n").help == "made by   "


def test_histogram_parts_need_their_suffix_and_a_valid_le() -> None:
    parsed = parse_text(
        b'# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket 2\nh_bucket{le="x"} 2\n'
        b"h 3\nh_count 1\nh_sum 0.5\n"
    )
    assert parsed.skipped_lines == 3
    assert [s.name for s in parsed.families[0].samples] == ["h_bucket", "h_count", "h_sum"]


def test_no_two_families_print_the_same_sample_name() -> None:
    # h_sum read as a family of its own, then as a part of histogram h: kept once.
    parsed = parse_text(b"h_sum 1\n# TYPE h histogram\nh_sum 2\nh_count 1\n")
    names = [s.name for f in parsed.families for s in f.samples]
    assert sorted(names) == ["h_count", "h_sum"]
    assert parsed.skipped_lines == 1


def test_limits_bound_lines_bytes_and_series() -> None:
    limits = Limits(max_bytes=100, max_line=40, max_series=3)
    long_line = b'm{a="' + b"x" * 40 + b'"} 1\n'
    assert parse_text(b"a 1\n" + long_line, limits).skipped_lines == 1
    parsed = parse_text(b"".join(b"s%d 1\n" % i for i in range(10)), limits)
    assert [f.name for f in parsed.families] == ["s0", "s1", "s2"]
    assert parsed.truncated
    assert parsed.skipped_lines == 7
    parsed = parse_text(b"".join(b"m%03d 1\n" % i for i in range(100)), Limits(max_bytes=100))
    assert parsed.truncated
    assert len(parsed.families) == 14


def test_crlf_and_blank_lines() -> None:
    parsed = parse_text(b"\r\n# TYPE m gauge\r\nm 1\r\n\n  \n")
    assert parsed.skipped_lines == 0
    assert parsed.families[0].samples == (TextSample("m", (), 1.0),)


def _mutated(rng: random.Random, lines: list[bytes]) -> bytes:
    junk = [b"\\", b'"', b"{", b"}", b",", b"=", b" ", b"\n", b"#", b"\xff", b"NaN", b"_bucket"]
    out = []
    for line in lines:
        roll = rng.random()
        if roll < 0.1 and line:
            cut = rng.randrange(len(line))
            line = line[:cut] + rng.choice(junk) + line[cut + 1 :]
        elif roll < 0.15:
            out.append(line)  # a duplicate
        elif roll < 0.18:
            line = line[: rng.randrange(len(line) + 1)]
        elif roll < 0.2:
            continue
        out.append(line)
    rng.shuffle(out) if rng.random() < 0.2 else None
    return b"\n".join(out)


def test_fuzzed_vllm_output_never_raises_and_renders_a_stable_exposition() -> None:
    rng = random.Random(14)
    lines = VLLM.split(b"\n")
    for _ in range(300):
        parsed = parse_text(_mutated(rng, lines))
        rendered = _rendered(parsed)
        again = parse_text(rendered)
        # What it renders it reads back whole and unchanged: a valid exposition.
        assert again.skipped_lines == 0
        assert _rendered(again) == rendered


@pytest.mark.needs_promtool
def test_promtool_accepts_what_hostile_input_renders_to(promtool: str) -> None:
    rng = random.Random(2026)
    lines = VLLM.split(b"\n")
    texts = [VLLM, b'# TYPE h histogram\nh_sum 1\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 2\n']
    texts += [_mutated(rng, lines) for _ in range(12)]
    for text in texts:
        problems = promtool_problems(promtool, _rendered(parse_text(text)))
        # Lint findings about names and help (the fuzz mangles both) are no invalid text.
        assert [p for p in problems if "error" in p or "exited" in p] == []
    assert promtool_problems(promtool, _rendered(parse_text(VLLM))) == []


def test_a_long_label_set_is_parsed_but_never_cached() -> None:
    """The label-set cache holds an engine's ordinary label sets; long ones (a hostile page
    may carry 64 KiB lines, new at every fetch) are parsed each time and never kept."""
    from metrics_proxy.prometheus import text_parser

    text_parser._parse_labels_cached.cache_clear()
    before = text_parser._parse_labels_cached.cache_info().currsize
    value = "x" * 4000
    page = b"# TYPE m gauge\n" + b"".join(
        b'm{i="%d",v="%s"} 1\n' % (i, value.encode()) for i in range(50)
    )
    parsed = parse_text(page)
    (family,) = parsed.families
    assert len(family.samples) == 50
    assert family.samples[7].labels == (("i", "7"), ("v", value))
    assert text_parser._parse_labels_cached.cache_info().currsize == before
    short = parse_text(b'# TYPE s gauge\ns{only_here="short"} 1\n')
    assert short.families[0].samples[0].labels == (("only_here", "short"),)
    assert text_parser._parse_labels_cached.cache_info().currsize == before + 1
