"""Per-tenant series: counted from settled records, bounded however many tenants come."""

from __future__ import annotations

import tracemalloc

from metrics_proxy.prometheus import render_text
from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.tenant_metrics import TenantMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def setup(limit: int = 3) -> tuple[ProxyMetricsRecorder, TenantMetrics, Clock]:
    clock = Clock()
    recorder = ProxyMetricsRecorder("m", registry=Registry(), process_metrics=False, clock=clock)
    tenants = TenantMetrics(recorder.registry, "m", "proxy", limit, clock=clock)
    return recorder, tenants, clock


def samples(recorder: ProxyMetricsRecorder, name: str) -> dict[tuple[tuple[str, str], ...], object]:
    family = next(f for f in recorder.collect() if f.name == name)
    return {sample.labels: sample.value for sample in family.samples}


def test_a_finished_request_counts_for_its_tenant() -> None:
    recorder, tenants, clock = setup()
    record = recorder.start_request()
    record.tenant_series = tenants.account("team-a")
    clock.now += 0.5
    record.slot_acquired()
    record.finish("stop", prompt_tokens=12, generation_tokens=40)
    labels = (("model_name", "m"), ("engine", "proxy"), ("tenant", "team-a"))
    assert samples(recorder, "proxy_tenant_requests_total")[(*labels, ("outcome", "stop"))] == 1
    assert samples(recorder, "proxy_tenant_prompt_tokens_total")[labels] == 12
    assert samples(recorder, "proxy_tenant_generation_tokens_total")[labels] == 40
    queue = samples(recorder, "proxy_tenant_queue_time_seconds")[labels]
    assert (queue.count, queue.sum) == (1, 0.5)  # type: ignore[attr-defined]


def test_a_rejected_request_counts_no_tokens() -> None:
    recorder, tenants, _ = setup()
    record = recorder.start_request()
    record.tenant_series = tenants.account("team-a")
    record.prompt_tokens = 9
    record.discard()
    labels = (("model_name", "m"), ("engine", "proxy"), ("tenant", "team-a"))
    assert samples(recorder, "proxy_tenant_requests_total") == {
        (*labels, ("outcome", "rejected")): 1
    }
    assert samples(recorder, "proxy_tenant_prompt_tokens_total")[labels] == 0
    queue = samples(recorder, "proxy_tenant_queue_time_seconds")[labels]
    assert queue.count == 0  # type: ignore[attr-defined]  # it never had a slot


def test_other_exists_from_the_start_and_takes_tenants_past_the_limit() -> None:
    recorder, tenants, _ = setup(limit=3)
    assert {dict(k)["tenant"] for k in samples(recorder, "proxy_tenant_prompt_tokens_total")} == {
        "other"
    }
    labels = [tenants.account(f"t{i}").label for i in range(5)]
    assert labels == ["t0", "t1", "t2", "other", "other"]
    assert tenants.account("t1").label == "t1"  # the first ones keep their series
    assert tenants.account("unknown").label == "unknown"  # never folded, never counted
    assert tenants.tenants == 3


def test_a_hostile_stream_of_names_adds_neither_series_nor_memory() -> None:
    recorder, tenants, _ = setup(limit=10)
    for i in range(10):
        tenants.account(f"first-{i}")
    before = len(render_text(recorder.collect()))
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(5000):
            record = recorder.start_request()
            record.tenant_series = tenants.account(f"hostile-{i}-" + "x" * 40)
            record.slot_acquired()
            record.finish("stop", prompt_tokens=1, generation_tokens=1)
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert tenants.tenants == 10
    series = samples(recorder, "proxy_tenant_requests_total")
    assert {dict(k)["tenant"] for k in series} == {"other"}  # the first ten never finished
    assert len(render_text(recorder.collect())) - before < 2000  # other's few new series
    assert grown < 64 * 1024  # nothing kept per name (5000 names of 50+ bytes: 250 kB)
