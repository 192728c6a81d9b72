"""End to end: a real Prometheus scrapes the proxy alone (with --engine-metrics), and vLLM's
official dashboard queries (and our dashboard's proxy panels) answer with finite, sane values,
no series twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metrics_proxy.config import Config
from metrics_proxy.families import COUNTED_BY_BOTH
from metrics_proxy.server import create_app
from tests.support.fake_upstream import BEHAVIOR_HEADER, FAKE_STATE, Behavior, make_fake_upstream

pytestmark = [pytest.mark.needs_prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
QUERIES: list[dict[str, str]] = json.loads(
    (Path(__file__).parent / "data" / "vllm_dashboard_queries.json").read_text()
)["queries"]
DASHBOARD = ROOT / "deploy" / "grafana" / "metrics-proxy-dashboard.json"
MODEL = "e2e-model"
TENANT_HEADER = "X-Tenant"
SECOND = "e2e-second"  # with --model-name auto, the router's other model
JOB = "metrics-proxy"
WINDOW = "1m"  # stands in for $__rate_interval: wider than the whole run, so rates see it all
# Panels whose series may legitimately sit at zero here: gauges read after the traffic (the
# engine's KV-cache usage among them), and a queue time that is microseconds without
# --max-concurrency.
MAY_BE_ZERO = {"Scheduler State", "Queue Time", "Cache Utilization"}
LATENCY_CEILING = 10.0  # seconds: the fake answers in tens of milliseconds
PROMETHEUS_START = 20.0  # seconds, like every bound below
SCRAPE_WAIT = 30.0  # Prometheus 2.x applies new targets on a 5 s tick: the first scrape is late
STOP = 10.0

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus server: where it listens, its log, its process."""

    base: str
    log: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def _prometheus(binary: str, workdir: Path, target: str) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``target`` every second. Stopped however the test ends:
    terminate, a bounded wait, then kill."""
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))
    port = _free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", log, process)
    finally:
        process.terminate()
        try:
            process.wait(STOP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP)


class PrometheusAPI:
    """The few calls of Prometheus's HTTP API the test needs."""

    def __init__(self, http: aiohttp.ClientSession, server: Prometheus) -> None:
        self.http, self.server, self.base = http, server, server.base

    async def wait_ready(self) -> None:
        # Nothing to await but the port: poll /-/ready, bounded, and stop if the server died.
        async with asyncio.timeout(PROMETHEUS_START):
            while True:
                code = self.server.process.poll()
                assert code is None, f"prometheus exited with {code}"
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with self.http.get(f"{self.base}/-/ready") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.base}/api/v1/query", params={"query": expr}) as response:
            body = await response.json()
        assert body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def wait_for_scrapes(self, n: int) -> None:
        # Scrapes happen in another process: poll the API, bounded.
        async with asyncio.timeout(SCRAPE_WAIT):
            while True:
                if await self.scrapes() >= n:
                    return
                await asyncio.sleep(0.1)

    async def duplicate_samples(self) -> float:
        """Samples Prometheus dropped as a series repeated within one scrape (its own count)."""
        async with self.http.get(f"{self.base}/metrics") as response:
            text = await response.text()
        name = "prometheus_target_scrapes_sample_duplicate_timestamp_total "
        (line,) = [line for line in text.splitlines() if line.startswith(name)]
        return float(line.split()[1])

    async def scrapes(self) -> int:
        """Successful scrapes of the proxy so far."""
        result = await self.query(f'sum_over_time(up{{job="{JOB}"}}[5m])')
        return int(float(result[0]["value"][1])) if result else 0


async def _chat(
    http: aiohttp.ClientSession, proxy: TestServer, model: str = MODEL, **options: Any
) -> int:
    behavior = options.pop("behavior", None)
    headers = {BEHAVIOR_HEADER: json.dumps(behavior)} if behavior else {}
    # Attribution (--tenant-header): the refusals come from one tenant, the rest from another.
    refused = behavior is not None and "status" in behavior
    headers[TENANT_HEADER] = "team-refused" if refused else "team-a"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **options}
    async with http.post(
        proxy.make_url("/v1/chat/completions"), json=body, headers=headers
    ) as response:
        await response.read()
        return response.status


async def _traffic(http: aiohttp.ClientSession, proxy: TestServer, model: str) -> None:
    statuses = await asyncio.gather(
        *(_chat(http, proxy, model, stream=True) for _ in range(4)),
        *(_chat(http, proxy, model, stream=False) for _ in range(3)),
        _chat(http, proxy, model, stream=True, behavior={"finish_reason": "length"}),
        _chat(http, proxy, model, stream=False, behavior={"finish_reason": "length"}),
        _chat(http, proxy, model, stream=False, behavior={"status": 500}),
        _chat(http, proxy, model, stream=False, behavior={"status": 400}),
    )
    assert statuses == [200] * 9 + [500, 400]
    async with http.post(
        proxy.make_url("/v1/completions"), json={"model": model, "prompt": "hi", "stream": True}
    ) as response:
        await response.read()
        assert response.status == 200


def _substitute(expr: str, model: str = MODEL, proxy_engine: str = "") -> str:
    return (
        expr.replace("$model_name", model)
        .replace("$__rate_interval", WINDOW)
        .replace("$proxy_job", JOB)
        .replace("$proxy_engine", proxy_engine)
    )


def _variable_query(name: str) -> str:
    """A dashboard variable's ``label_values(selector, label)`` as PromQL that answers one
    series per value of ``label``."""
    (variable,) = [
        v for v in json.loads(DASHBOARD.read_text())["templating"]["list"] if v["name"] == name
    ]
    selector, label = variable["query"]["query"].removeprefix("label_values(")[:-1].rsplit(", ", 1)
    return _substitute(f"count by ({label}) ({selector})")


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(series["value"][1]) for series in result]


def _proxy_panel_queries() -> list[dict[str, str]]:
    official = {q["panel"] for q in QUERIES}
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        {"panel": panel["title"], "expr": target["expr"]}
        for panel in dashboard["panels"]
        if panel["type"] != "row" and panel["title"] not in official
        for target in panel["targets"]
    ]


async def _proxy_serving(
    aiohttp_server: ServerFactory, models: tuple[str, ...]
) -> tuple[TestServer, Config]:
    """The proxy in front of the fake: for one model with that --model-name and
    --engine-metrics; for several, a router's list and --model-name auto, returned once every
    model has its series."""
    upstream_app = make_fake_upstream(
        Behavior(ttft=0.02, itl=0.005, completion_tokens=8), model=MODEL
    )
    upstream = await aiohttp_server(upstream_app)
    auto = len(models) > 1
    if auto:
        upstream_app[FAKE_STATE].model_list = [{"id": model} for model in models]
    config = Config(
        upstream_url=str(upstream.make_url("")),
        model_name="auto" if auto else MODEL,
        tenant_header=TENANT_HEADER,
        # In front of one engine, its series too (the sidecar); not in front of a router.
        engine_metrics=not auto,
    )
    proxy = await aiohttp_server(create_app(config))
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        while True:  # the list is read as the proxy starts: a bounded poll for its series
            async with http.get(proxy.make_url("/metrics")) as response:
                text = await response.text()
            if all(f'model_name="{model}"' in text for model in models):
                return proxy, config
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("models", [(MODEL,), (MODEL, SECOND)], ids=["one-model", "auto-two"])
async def test_dashboard_queries_answer_from_a_real_prometheus(
    prometheus_binary: str,
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    models: tuple[str, ...],
) -> None:
    proxy, config = await _proxy_serving(aiohttp_server, models)
    timeout = aiohttp.ClientTimeout(total=10)
    queries = [*QUERIES, *_proxy_panel_queries()]
    with _prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{proxy.port}") as server:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            prometheus = PrometheusAPI(http, server)
            try:
                await prometheus.wait_ready()
                # A scrape before any traffic: rate() needs a sample from before the increase.
                await prometheus.wait_for_scrapes(1)
                for model in models:
                    await _traffic(http, proxy, model)
                seen = await prometheus.scrapes()
                # A trickle until two scrapes have followed the burst (bounded). It holds a 500
                # too: http_requests_total{status="5xx"} is born at the burst's first 500, and
                # rate() sees only increases after a series' first sample.
                async with asyncio.timeout(SCRAPE_WAIT):
                    while await prometheus.scrapes() < seen + 2:
                        for model in models:
                            statuses = await asyncio.gather(
                                _chat(http, proxy, model, stream=True),
                                _chat(http, proxy, model, behavior={"status": 500}),
                                _chat(http, proxy, model, behavior={"status": 400}),
                            )
                            assert list(statuses) == [200, 500, 400]
                # $proxy_engine as Grafana fills it: the proxy's label, never the engine's.
                proxy_engines = await prometheus.query(_variable_query("proxy_engine"))
                assert [s["metric"]["engine"] for s in proxy_engines] == ["proxy"]
                results = {
                    model: {
                        q["expr"]: await prometheus.query(_substitute(q["expr"], model, "proxy"))
                        for q in [*queries, *_SCRAPE_CHECKS]
                    }
                    for model in models
                }
                duplicates = await prometheus.duplicate_samples()
            except BaseException:
                print(server.log.read_text()[-4000:])  # shown by pytest on failure
                raise
    engine = config.engine_metrics
    for model in models:  # the dashboard with its model_name variable set to each
        _check_dashboard(results[model], engine)
        _check_proxy_rows(results[model], config if engine else None)
    if engine:
        _check_one_target(results[MODEL])
    assert duplicates == 0


# Without --engine-metrics (the proxy in front of a router, where no one engine is "the"
# engine), the engine-only panel is empty: the proxy never fakes it.
ENGINE_ONLY = {'vllm:kv_cache_usage_perc{model_name="$model_name"}'}


def _check_dashboard(results: dict[str, list[dict[str, Any]]], engine: bool) -> None:
    problems = []
    for q in QUERIES:
        panel, expr = q["panel"], q["expr"]
        values = _values(results[expr])
        if not engine and expr in ENGINE_ONLY:
            if values:
                problems.append(f"{panel}: engine-only, but answers {values} without it")
            continue
        if not values or not all(math.isfinite(v) and v >= 0 for v in values):
            problems.append(f"{panel}: {expr!r} -> {values}")
        elif panel not in MAY_BE_ZERO and max(values) <= 0:
            problems.append(f"{panel}: {expr!r} is all zero: {values}")
        elif "Latency" in panel and not max(values) < LATENCY_CEILING:
            problems.append(f"{panel}: {expr!r} is no latency of this traffic: {values}")
    assert len(QUERIES) == 27
    assert problems == []
    reasons = {
        s["metric"]["finished_reason"]: float(s["value"][1])
        for s in results[next(q["expr"] for q in QUERIES if q["panel"] == "Finish Reason")]
    }
    assert all(reasons[r] > 0 for r in ("stop", "length", "error")), reasons


def _check_proxy_rows(results: dict[str, list[dict[str, Any]]], engine: Config | None) -> None:
    """The proxy's own rows: every query answers, finite and non-negative (the engine scrape's
    only with --engine-metrics), and the tenant row puts each tenant where its traffic does."""
    for q in _proxy_panel_queries():
        values = _values(results[q["expr"]])
        if engine is None and q["panel"].startswith("Engine scrape"):
            assert values == [], q
            continue
        assert values, q
        assert all(math.isfinite(v) and v >= 0 for v in values), (q, values)
    errors = {s["metric"]["kind"]: float(s["value"][1]) for s in results[_expr("Proxy errors")]}
    assert errors["upstream_status"] > 0, errors
    (ratio,) = _values(results[_expr("Proxy HTTP 5xx ratio")])
    assert 0 < ratio < 1
    if engine is not None:
        up, duration = (
            _values(results[q["expr"]])
            for q in _proxy_panel_queries()
            if q["panel"].startswith("Engine scrape")
        )
        assert up == [1.0]
        assert 0 < duration[0] < engine.engine_metrics_timeout
    tokens = _by_tenant(results[_expr("Top tenants by tokens/s")])
    assert tokens["team-a"] > 0, tokens
    assert set(_by_tenant(results[_expr("Rejected requests by tenant")])) == {"team-refused"}
    requests = _by_tenant(results[_expr("Top tenants by requests/s")])
    # (and "unknown": the one completion request names no tenant)
    assert requests.keys() == {"team-a", "team-refused", "unknown"}, requests
    assert set(_by_tenant(results[_expr("Top tenants by mean queue time")])) <= set(requests)


def _by_tenant(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"]["tenant"]: float(series["value"][1]) for series in result}


# Every scrape whole, the engine read at each, and of the engine's vLLM series only those
# that count no request twice (the proxy's, engine="proxy", count those).
_SCRAPE_CHECKS = [
    {"expr": f'min_over_time(up{{job="{JOB}"}}[5m])'},
    {"expr": "min_over_time(proxy_engine_scrape_up[5m])"},
    {"expr": 'count by (__name__) ({__name__=~"vllm:.+", engine="0"})'},
    {"expr": 'count by (__name__) ({__name__=~"vllm:.+", engine="proxy"})'},
]


def _check_one_target(results: dict[str, list[dict[str, Any]]]) -> None:
    up, engine_up, engines, proxys = (results[q["expr"]] for q in _SCRAPE_CHECKS)
    assert _values(up) == [1.0]
    assert _values(engine_up) == [1.0]
    engine_names = {s["metric"]["__name__"] for s in engines}
    proxy_names = {s["metric"]["__name__"] for s in proxys}
    counted = {f"{n}{part}" for n in COUNTED_BY_BOTH for part in ("", "_bucket", "_count", "_sum")}
    assert "vllm:kv_cache_usage_perc" in engine_names
    assert "vllm:num_requests_running" in engine_names & proxy_names
    assert proxy_names & counted
    assert not engine_names & counted
    assert not [n for n in engine_names if n.endswith("_created")]


def _expr(panel_prefix: str) -> str:
    (expr,) = [q["expr"] for q in _proxy_panel_queries() if q["panel"].startswith(panel_prefix)]
    return expr
