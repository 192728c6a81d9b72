"""Which of the engine's families join the proxy's: exactly those the README's relabel rule
keeps, each series once, one HELP and TYPE per name, and a valid exposition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.engine_series import is_taken, join
from metrics_proxy.families import COUNTED_BY_BOTH, ENGINE_ORIGIN, MARKED_WITH_ORIGIN
from metrics_proxy.prometheus import pre_render, render_text
from metrics_proxy.prometheus.text_parser import TextFamily, parse_text
from tests.support.tools import promtool_problems

ROOT = Path(__file__).resolve().parent.parent
VLLM = (ROOT / "tests" / "data" / "vllm_0.33_exposition.txt").read_bytes()
ENGINE = parse_text(VLLM).families
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _relabel_rule() -> re.Pattern[str]:
    """The README's rule for scraping vLLM beside the proxy, anchored as Prometheus does."""
    readme = (ROOT / "README.md").read_text()
    (regex,) = re.findall(r'action: drop, regex: "([^"]+)"', readme)
    return re.compile(f"(?:{regex})")


def _ours(engine_label: str = "proxy") -> ProxyMetricsRecorder:
    return ProxyMetricsRecorder(MODEL, engine=engine_label, process_metrics=False)


def _joined_names(engine: tuple[TextFamily, ...] = ENGINE) -> set[str]:
    return {f.name for f in join(_ours().collect(), engine).families}


def test_the_left_out_families_are_exactly_the_readmes_relabel_rule() -> None:
    rule = _relabel_rule()
    names = {f.name for f in ENGINE}
    for family in ENGINE:
        if family.name.endswith("_created"):  # never emitted, whatever the rule says
            assert not is_taken(family.name, names), family.name
            continue
        dropped_by_rule = all(rule.fullmatch(s.name) for s in family.samples)
        assert dropped_by_rule == (family.name in COUNTED_BY_BOTH), family.name
        assert is_taken(family.name, names) != dropped_by_rule, family.name


def test_the_engine_only_families_and_gauges_join_and_no_created() -> None:
    joined = _joined_names()
    assert {
        "vllm:kv_cache_usage_perc",
        "vllm:num_preemptions_total",
        "vllm:request_num_preemptions",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_cached_total",
        "vllm:iteration_tokens_total",
        "vllm:engine_sleep_state",
        "vllm:cache_config_info",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:num_requests_waiting_by_reason",
        "vllm:admission_rejections_total",
    } <= joined
    assert not [name for name in joined if name.endswith("_created")]
    assert not joined & COUNTED_BY_BOTH
    assert len(joined) == 23


def test_a_gauge_that_merely_ends_in_created_is_kept() -> None:
    engine = parse_text(b"# TYPE vllm:things_created gauge\nvllm:things_created 3\n").families
    assert _joined_names(engine) == {"vllm:things_created"}


def test_only_vllms_namespace_is_taken() -> None:
    engine = parse_text(
        b'http_requests_total{handler="/v1/models",method="GET",status="2xx"} 1\n'
        b"process_cpu_seconds_total 9\npython_info 1\nother 1\nvllm:x 1\n"
    ).families
    assert _joined_names(engine) == {"vllm:x"}


def test_a_shared_name_shares_one_block_with_both_engines_series() -> None:
    recorder = _ours()
    text = render_text(
        recorder.collect(), pre_render(join(recorder.collect(), ENGINE).families)
    ).decode()
    block = text.split("# HELP vllm:num_requests_running ")[1].split("# HELP")[0]
    assert text.count("# TYPE vllm:num_requests_running ") == 1
    assert f'vllm:num_requests_running{{engine="proxy",model_name="{MODEL}"}} 0.0' in block
    assert f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 3.0' in block


def test_engine_series_carry_exactly_vllms_labels_where_engine_tells_them_apart() -> None:
    joined = {f.name: f for f in join(_ours().collect(), ENGINE).families}
    for family in ENGINE:
        if family.name in joined and family.name not in MARKED_WITH_ORIGIN:
            assert joined[family.name].samples == family.samples, family.name


def test_a_shared_family_without_an_engine_label_marks_every_engine_series() -> None:
    # vLLM prints its admission rejections without an engine label, as the proxy does: only
    # origin="engine" tells them apart, on every series of the family, colliding or not.
    assert {"vllm:admission_rejections_total"} == MARKED_WITH_ORIGIN
    engine = parse_text(
        "# TYPE vllm:admission_rejections_total counter\n"
        f'vllm:admission_rejections_total{{model_name="{MODEL}",reason="max_num_queued_reqs"}} 1\n'
        'vllm:admission_rejections_total{model_name="other",reason="never_ours"} 2\n'.encode()
    ).families
    joined = join(_ours().collect(), engine)
    (rejections,) = joined.families
    assert {s.labels for s in rejections.samples} == {
        (("model_name", MODEL), ("reason", "max_num_queued_reqs"), ENGINE_ORIGIN),
        (("model_name", "other"), ("reason", "never_ours"), ENGINE_ORIGIN),
    }
    assert joined.conflicts == 0


def test_vllms_own_source_label_stays_as_it_is() -> None:
    joined = join(_ours().collect(), ENGINE)
    (by_source,) = [f for f in joined.families if f.name == "vllm:prompt_tokens_by_source_total"]
    assert {dict(s.labels)["source"] for s in by_source.samples} == {
        "local_compute",
        "local_cache_hit",
        "external_kv_transfer",
    }


def test_an_engine_series_equal_to_ours_is_left_out_and_counted() -> None:
    # An engine that says engine="proxy", the proxy's --engine-label: the proxy's series wins.
    engine = parse_text(
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="proxy",model_name="{MODEL}"}} 1\n'
        f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 2\n'.encode()
    ).families
    recorder = _ours()
    joined = join(recorder.collect(), engine)
    assert [s.value for f in joined.families for s in f.samples] == [2.0]
    assert joined.conflicts == 1
    text = render_text(recorder.collect(), pre_render(joined.families))
    assert parse_text(text).skipped_lines == 0


def test_in_the_marked_family_a_series_with_an_origin_of_its_own_is_left_out() -> None:
    engine = parse_text(
        "# TYPE vllm:admission_rejections_total counter\n"
        f'vllm:admission_rejections_total{{model_name="{MODEL}",origin="x",reason="a"}} 1\n'
        f'vllm:admission_rejections_total{{model_name="{MODEL}",reason="a"}} 2\n'
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0",model_name="{MODEL}",origin="x"}} 3\n'.encode()
    ).families
    joined = join(_ours().collect(), engine)
    assert [s.value for f in joined.families for s in f.samples] == [2.0, 3.0]
    assert joined.conflicts == 1


def test_a_family_whose_type_differs_from_ours_is_left_out_and_counted() -> None:
    engine = parse_text(
        b"# TYPE vllm:num_requests_running counter\nvllm:num_requests_running 1\n"
        b"# TYPE vllm:time_to_first_token_seconds_bucket gauge\n"
        b"vllm:time_to_first_token_seconds_bucket 1\nvllm:fine 1\n"
    ).families
    joined = join(_ours().collect(), engine)
    assert [f.name for f in joined.families] == ["vllm:fine"]
    assert joined.conflicts == 2


@pytest.mark.needs_promtool
def test_promtool_accepts_the_joined_exposition(promtool: str) -> None:
    recorder = ProxyMetricsRecorder(MODEL, engine="0")
    text = render_text(recorder.collect(), pre_render(join(recorder.collect(), ENGINE).families))
    assert promtool_problems(promtool, text) == []
    assert parse_text(text).skipped_lines == 0  # every series once
