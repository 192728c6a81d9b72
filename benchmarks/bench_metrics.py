"""Metrics-core speed: render the full family set, one histogram observation and its quantile
sketch's share of it, and what --engine-metrics adds to a scrape (vLLM 0.33's own /metrics,
tests/data's sample, read and joined to the proxy's).

Run: python benchmarks/bench_metrics.py   (or make bench-metrics)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.engine_series import join
from metrics_proxy.prometheus import RenderedFamily, pre_render, render_json, render_text
from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.prometheus.sketch import WindowedSketch
from metrics_proxy.prometheus.text_parser import parse_text
from metrics_proxy.record import RequestRecord
from metrics_proxy.tenant_metrics import TenantMetrics
from metrics_proxy.tenants import TenantReader

TENANTS = 100  # --tenant-limit's default: the most tenants with series of their own
ENGINE_SAMPLE = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "vllm_0.33_exposition.txt"
)


def _loaded_recorder() -> ProxyMetricsRecorder:
    """A recorder after mixed traffic, so every family has samples to render."""
    recorder = ProxyMetricsRecorder("bench-model", engine="0", max_model_len=131072)
    for i in range(1000):
        request = recorder.start_request()
        request.max_tokens = 256
        request.slot_acquired()
        for _ in range(5):
            request.output()
        reason = ("stop", "length", "abort", "error")[i % 4]
        request.finish(reason, prompt_tokens=100 + i, generation_tokens=5)
        recorder.observe_http("/v1/chat/completions", "POST", 200, 0.01 * (i % 50))
    recorder.observe_http("/v1/models", "GET", 200, 0.001)
    return recorder


def _per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median seconds per call over ``repeats`` timed batches of ``calls`` calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    recorder = _loaded_recorder()
    families = recorder.collect()
    series = sum(len(f.samples) for f in families)
    text_size = len(render_text(families))
    rows = [
        (
            "collect + render /metrics text",
            _per_call(lambda: render_text(recorder.collect()), 200, args.repeats),
        ),
        (
            "collect + render /internal/metrics JSON",
            _per_call(lambda: render_json(recorder.collect()), 200, args.repeats),
        ),
        (
            "one histogram observation (buckets and quantile sketch)",
            _per_call(lambda: recorder.observe_inter_token_latency(0.023), 200_000, args.repeats),
        ),
        (
            "of which the quantile sketch (since start and last minute)",
            _per_call(_sketch_add(), 200_000, args.repeats),
        ),
        (
            "one request's full accounting",
            _per_call(lambda: _one_request(recorder), 20_000, args.repeats),
        ),
        *_attribution_rows(args.repeats),
        *_engine_rows(recorder, args.repeats),
    ]
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"{len(families)} families, {series} series, {text_size} bytes of text"
    )
    print("| measurement | per call |")
    print("| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.2f} µs |")


def _attribution_rows(repeats: int) -> list[tuple[str, float]]:
    """What attribution adds: per request (reading the tenant, its account, its series moved
    as the request settles) and per scrape (TENANTS tenants' series)."""
    plain = ProxyMetricsRecorder("bench-model", registry=Registry(), process_metrics=False)
    recorder = ProxyMetricsRecorder("bench-model", registry=Registry(), process_metrics=False)
    tenants = TenantMetrics(recorder.registry, "bench-model", "0", TENANTS)
    for i in range(TENANTS):
        record = recorder.start_request()
        record.tenant_series = tenants.account(f"tenant-{i}")
        _finish(record)
        _finish(plain)
    by_header = TenantReader("X-Tenant")
    by_key = TenantReader(salt=b"a benchmark's salt, not a secret")
    header = {"X-Tenant": "tenant-7"}
    bearer = {"Authorization": "Bearer sk-bench-client-key-0123456789"}

    def attributed(reader: TenantReader, headers: dict[str, str]) -> Callable[[], None]:
        def one() -> None:
            record = recorder.start_request()
            record.tenant = tenant = reader.read(headers)
            record.tenant_series = tenants.account(tenant)
            _finish(record)

        return one

    # Interleaved, batch by batch, so that the machine's drift falls on each alike.
    per_request = _interleaved(
        [lambda: _finish(plain), attributed(by_header, header), attributed(by_key, bearer)],
        20_000,
        repeats,
    )
    per_scrape = _interleaved(
        [lambda: render_text(plain.collect()), lambda: render_text(recorder.collect())],
        50,
        repeats,
    )
    names = (
        "one request's accounting, no attribution",
        "the same, attributed by --tenant-header",
        "the same, attributed by --tenant-from-api-key (an HMAC)",
        "collect + render /metrics text, no tenants",
        f"the same with {TENANTS} tenants' series",
    )
    return list(zip(names, [*per_request, *per_scrape], strict=True))


def _interleaved(fns: list[Callable[[], object]], calls: int, repeats: int) -> list[float]:
    """Median seconds per call of each of ``fns``, timed in alternating batches."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, timed in zip(fns, samples, strict=True):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            timed.append((time.perf_counter() - start) / calls)
    return [statistics.median(timed) for timed in samples]


def _finish(recorder_or_record: ProxyMetricsRecorder | RequestRecord) -> None:
    """A request of 10 prompt and 2 generation tokens, from its start to its account."""
    record = (
        recorder_or_record.start_request()
        if isinstance(recorder_or_record, ProxyMetricsRecorder)
        else recorder_or_record
    )
    record.slot_acquired()
    record.finish("stop", prompt_tokens=10, generation_tokens=2)


def _engine_rows(recorder: ProxyMetricsRecorder, repeats: int) -> list[tuple[str, float]]:
    """--engine-metrics: each fetch (at most one a second) reads and joins the engine's page;
    each scrape renders the joined families beside the proxy's."""
    engine_text = ENGINE_SAMPLE.read_bytes()

    def fetched() -> tuple[RenderedFamily, ...]:
        return pre_render(join(recorder.collect(), parse_text(engine_text).families).families)

    joined = fetched()
    size = len(render_text(recorder.collect(), joined))
    return [
        (
            f"engine fetch: parse its {len(engine_text) // 1024} KB /metrics, join it to ours, "
            "format its lines",
            _per_call(fetched, 20, repeats),
        ),
        (
            f"collect + render /metrics text with the engine's families ({size // 1024} KB)",
            _per_call(lambda: render_text(recorder.collect(), joined), 200, repeats),
        ),
    ]


def _sketch_add() -> Callable[[], None]:
    """One observation into a sketch alone, on the real clock: what each histogram adds."""
    sketch = WindowedSketch(time.monotonic)

    def add() -> None:
        sketch.add(0.023)

    return add


def _one_request(recorder: ProxyMetricsRecorder) -> None:
    request = recorder.start_request()
    request.slot_acquired()
    request.output()
    request.output()
    request.finish("stop", prompt_tokens=10, generation_tokens=2)


if __name__ == "__main__":
    main()
