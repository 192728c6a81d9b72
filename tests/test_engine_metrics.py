"""--engine-metrics through HTTP: the proxy's /metrics carries the engine's own series, and a
slow, failing, hostile or absent engine costs a scrape no more than its timeout and shows in
the proxy_engine_scrape_* series."""

from __future__ import annotations

import asyncio
import gzip
import logging
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy import engine_scraper
from metrics_proxy.config import Config, ConfigError
from metrics_proxy.engine_scraper import EngineScraper, engine_metrics_url
from metrics_proxy.prometheus import exposition
from metrics_proxy.prometheus.text_parser import parse_text
from metrics_proxy.server import create_app
from tests.support.fake_upstream import FAKE_STATE, Behavior, make_fake_upstream
from tests.support.stack import StackFactory
from tests.support.tools import promtool_problems

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ENGINE_TEXT = (
    b"# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
    b"# TYPE vllm:kv_cache_usage_perc gauge\n"
    b'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
)
TIMEOUT = 0.3  # --engine-metrics-timeout in these tests
WAIT = 5.0  # the bound on every wait of the tests themselves
NONE = "\N{EN DASH}"  # how the README writes "no labels"


def _series(text: str) -> dict[str, float]:
    """Each sample line of an exposition: 'name{labels}' -> value."""
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: float(value) for key, value in lines}


def _scrape_errors(series: dict[str, float]) -> dict[str, float]:
    prefix = 'proxy_engine_scrape_errors_total{kind="'
    return {k[len(prefix) : -2]: v for k, v in series.items() if k.startswith(prefix)}


async def _engine(aiohttp_server: ServerFactory, handler: Handler) -> TestServer:
    app = web.Application()
    app.router.add_get("/metrics", handler)
    return await aiohttp_server(app)


async def _proxy(
    aiohttp_client: ClientFactory, engine: TestServer, **settings: Any
) -> TestClient[web.Request, web.Application]:
    config = Config(
        upstream_url=str(engine.make_url("")),
        model_name="m",
        engine_metrics=True,
        engine_metrics_timeout=TIMEOUT,
        **settings,
    )
    return await aiohttp_client(create_app(config))


async def _metrics(client: TestClient[web.Request, web.Application]) -> str:
    response = await client.get("/metrics")
    assert response.status == 200
    return await response.text()


# --- an engine that answers ----------------------------------------------------------------


async def test_the_engines_own_series_join_the_proxys(make_stack: StackFactory) -> None:
    stack = await make_stack(engine_metrics=True)
    response = await stack.client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status == 200
    await response.read()
    text = await _metrics(stack.client)
    series = _series(text)
    engine = 'engine="0",model_name="fake-model"'
    assert series[f"vllm:kv_cache_usage_perc{{{engine}}}"] == 0.0
    assert series[f"vllm:prefix_cache_hits_total{{{engine}}}"] == 64.0
    bucket = 'engine="0",le="+Inf",model_name="fake-model"'
    assert series[f"vllm:request_num_preemptions_bucket{{{bucket}}}"] == 1.0
    assert series["proxy_engine_scrape_up"] == 1.0
    assert set(_scrape_errors(series).values()) == {0.0}
    # One block for a name both print, the proxy's series and the engine's in it.
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    assert f"vllm:num_requests_running{{{engine}}}" in series
    assert 'vllm:num_requests_running{engine="proxy",model_name="m"}' in series
    # What both count comes from the proxy alone; the engine's http_* and _created, never.
    assert not [k for k in series if k.startswith('vllm:prompt_tokens_total{engine="0"')]
    assert not [k for k in series if "_created" in k]
    assert (
        series['http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"}']
        == 1
    )
    assert parse_text(text.encode()).skipped_lines == 0  # and every series once


@pytest.mark.needs_promtool
async def test_promtool_accepts_the_joined_page(make_stack: StackFactory, promtool: str) -> None:
    stack = await make_stack(engine_metrics=True)
    assert promtool_problems(promtool, (await _metrics(stack.client)).encode()) == []


async def test_the_engine_is_asked_without_credentials(make_stack: StackFactory) -> None:
    stack = await make_stack(engine_metrics=True, upstream_api_key="sk-up", api_key="sk-client")
    await _metrics(stack.client)
    (asked,) = [r for r in stack.state.requests if r.path == "/metrics"]
    assert "Authorization" not in asked.headers
    assert asked.headers["Accept-Encoding"] == "identity"


async def test_without_the_setting_the_engine_is_never_asked(make_stack: StackFactory) -> None:
    stack = await make_stack()
    text = await _metrics(stack.client)
    assert "proxy_engine_scrape" not in text
    assert "vllm:kv_cache_usage_perc" not in text
    assert not [r for r in stack.state.requests if r.path == "/metrics"]


async def test_the_json_snapshot_has_the_scrape_series_not_the_engines(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(engine_metrics=True)
    await _metrics(stack.client)
    snapshot = await stack.snapshot()
    assert snapshot["proxy_engine_scrape_up"]["samples"][0]["value"] == 1.0
    assert "vllm:kv_cache_usage_perc" not in snapshot


async def test_scrapes_at_once_share_one_fetch(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    asked = 0
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        await release.wait()
        return web.Response(body=ENGINE_TEXT)

    engine = await _engine(aiohttp_server, slow)
    config = Config(upstream_url=str(engine.make_url("")), model_name="m", engine_metrics=True)
    app = create_app(config)
    arrived: list[asyncio.Event] = [asyncio.Event() for _ in range(8)]

    @web.middleware
    async def note_arrival(request: web.Request, handler: Handler) -> web.StreamResponse:
        next(e for e in arrived if not e.is_set()).set()
        # The handler runs on to its wait for the fetch before the test's task wakes.
        return await handler(request)

    app.middlewares.append(note_arrival)
    client = await aiohttp_client(app)
    scrapes = [asyncio.create_task(_metrics(client)) for _ in arrived]
    async with asyncio.timeout(WAIT):
        await asyncio.gather(*(e.wait() for e in arrived))
        release.set()
        texts = await asyncio.gather(*scrapes)
    assert asked == 1
    kv_cache = 'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25'
    assert all(kv_cache in t for t in texts)


async def test_a_fetch_is_kept_for_a_second(aiohttp_server: ServerFactory) -> None:
    asked = 0

    async def counted(request: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        return web.Response(body=ENGINE_TEXT)

    engine = await _engine(aiohttp_server, counted)
    now = 100.0
    scraper = EngineScraper(str(engine.make_url("/metrics")), WAIT, lambda: (), clock=lambda: now)
    async with aiohttp.ClientSession() as session:
        scraper.session = session
        first = await scraper.families()
        now += 0.9
        assert await scraper.families() == first
        assert asked == 1
        now += 0.2
        await scraper.families()
        assert asked == 2
    assert [f.name for f in first] == ["vllm:kv_cache_usage_perc"]


# --- an engine that does not answer well ---------------------------------------------------


async def test_a_hanging_engine_costs_a_scrape_its_timeout_only(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response(body=ENGINE_TEXT)

    engine = await _engine(aiohttp_server, hang)
    client = await _proxy(aiohttp_client, engine)
    try:
        started = time.monotonic()
        series = _series(await _metrics(client))
        elapsed = time.monotonic() - started
    finally:
        never.set()
    assert TIMEOUT <= elapsed < TIMEOUT + 2.0
    assert series["proxy_engine_scrape_up"] == 0.0
    assert series["proxy_engine_scrape_duration_seconds"] >= TIMEOUT
    assert _scrape_errors(series)["timeout"] == 1.0
    assert 'vllm:num_requests_running{engine="proxy",model_name="m"}' in series


async def _failed_scrape(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, handler: Handler
) -> dict[str, float]:
    client = await _proxy(aiohttp_client, await _engine(aiohttp_server, handler))
    series = _series(await _metrics(client))
    assert series["proxy_engine_scrape_up"] == 0.0
    assert not [k for k in series if k.startswith("vllm:kv_cache")]
    assert 'vllm:num_requests_running{engine="proxy",model_name="m"}' in series
    return _scrape_errors(series)


async def test_an_engine_error_status(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, body=ENGINE_TEXT)

    assert (await _failed_scrape(aiohttp_server, aiohttp_client, failing))["status"] == 1.0


async def test_an_answer_past_the_size_bound(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no length to refuse it by in advance
        await response.prepare(request)
        line = b"vllm:x " + b"1" * 1000 + b"\n"
        try:
            for _ in range(16):  # 16 MiB
                await response.write(line * 1024)
        except ConnectionError:
            return response  # the proxy hung up once past the bound
        raise AssertionError("all 16 MiB were read")

    assert (await _failed_scrape(aiohttp_server, aiohttp_client, huge))["too_large"] == 1.0


async def test_an_answer_cut_short(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "10000"})
        await response.prepare(request)
        await response.write(ENGINE_TEXT)
        assert request.transport is not None
        request.transport.close()
        return response

    assert (await _failed_scrape(aiohttp_server, aiohttp_client, cut))["connect"] == 1.0


async def test_an_engine_that_is_not_there(aiohttp_client: ClientFactory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    config = Config(
        upstream_url=f"http://127.0.0.1:{port}",
        model_name="m",
        engine_metrics=True,
        engine_metrics_timeout=TIMEOUT,
    )
    series = _series(await _metrics(await aiohttp_client(create_app(config))))
    assert series["proxy_engine_scrape_up"] == 0.0
    assert _scrape_errors(series)["connect"] == 1.0


async def test_garbage_is_left_out_line_by_line(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        body = b"\x00\xff\xfe garbage\n{{{\nvllm:fine 1\n" + b'vllm:x{a="\\q"} 1\n' + ENGINE_TEXT
        return web.Response(body=body)

    client = await _proxy(aiohttp_client, await _engine(aiohttp_server, garbage))
    series = _series(await _metrics(client))
    assert series["proxy_engine_scrape_up"] == 1.0
    assert _scrape_errors(series)["invalid_line"] == 3.0
    assert series["vllm:fine"] == 1.0
    assert series['vllm:kv_cache_usage_perc{engine="0",model_name="m"}'] == 0.25


async def test_a_scrape_the_cache_serves_formats_none_of_the_engines_lines(
    make_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack(engine_metrics=True)
    first = await _metrics(stack.client)

    def formatting(*args: object) -> str:
        raise AssertionError("an engine line formatted again")

    # The engine's lines were formatted at the fetch; the next scrape, within the cache's
    # second, only places them.
    monkeypatch.setattr(exposition, "_uncached_label_text", formatting)
    second = await _metrics(stack.client)
    engine = 'vllm:kv_cache_usage_perc{engine="0",model_name="fake-model"}'
    assert _series(second)[engine] == _series(first)[engine]


async def test_an_unexpected_error_leaves_the_proxys_page_whole(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(body: bytes, limits: object) -> None:
        raise ValueError(f"a bug, quoting the page: {body[:40]!r}")

    monkeypatch.setattr(engine_scraper, "parse_text", broken)

    async def answering(request: web.Request) -> web.Response:
        return web.Response(body=ENGINE_TEXT)

    caplog.set_level(logging.INFO, "metrics_proxy")
    client = await _proxy(aiohttp_client, await _engine(aiohttp_server, answering))
    series = _series(await _metrics(client))
    assert series["proxy_engine_scrape_up"] == 0.0
    assert _scrape_errors(series)["internal"] == 1.0
    assert 'vllm:num_requests_running{engine="proxy",model_name="m"}' in series
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert "ValueError" in record.getMessage()
    assert "kv_cache" not in caplog.text  # nothing of the engine's page


async def test_an_unexpected_error_is_logged_once(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def answering(request: web.Request) -> web.Response:
        return web.Response(body=ENGINE_TEXT)

    def ours() -> tuple[()]:
        raise KeyError("no such family")

    engine = await _engine(aiohttp_server, answering)
    now = 0.0
    scraper = EngineScraper(str(engine.make_url("/metrics")), WAIT, ours, clock=lambda: now)
    caplog.set_level(logging.INFO, "metrics_proxy")
    async with aiohttp.ClientSession() as session:
        scraper.session = session
        for _ in range(3):
            assert await scraper.families() == ()
            now += 2.0
    (record,) = caplog.records
    assert "KeyError" in record.getMessage()
    assert "no such family" not in caplog.text


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)


@pytest.mark.parametrize(
    ("encoding", "encode"), [("gzip", _gzip), ("deflate", zlib.compress), ("GZIP", _gzip)]
)
async def test_a_compressed_answer_is_decoded(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    encoding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    async def compressed(request: web.Request) -> web.Response:
        return web.Response(body=encode(ENGINE_TEXT), headers={"Content-Encoding": encoding})

    client = await _proxy(aiohttp_client, await _engine(aiohttp_server, compressed))
    series = _series(await _metrics(client))
    assert series["proxy_engine_scrape_up"] == 1.0
    assert series['vllm:kv_cache_usage_perc{engine="0",model_name="m"}'] == 0.25
    assert set(_scrape_errors(series).values()) == {0.0}


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("br", b"\x8b\x03\x80hello\x03"),
        ("zstd", b"(\xb5/\xfd"),
        ("gzip, gzip", _gzip(_gzip(ENGINE_TEXT))),
        ("gzip", b"not gzip at all"),
        ("gzip", _gzip(ENGINE_TEXT)[:-12]),  # cut inside the stream
        ("gzip", _gzip(ENGINE_TEXT) + b"trailing"),
    ],
)
async def test_an_encoding_that_cannot_be_read_is_refused(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, encoding: str, body: bytes
) -> None:
    async def encoded(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Encoding": encoding})

    assert (await _failed_scrape(aiohttp_server, aiohttp_client, encoded))["encoding"] == 1.0


async def test_a_compressed_answer_is_bounded_by_its_decoded_size(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    # 40 KB that decode to 40 MiB, five times the bound: refused without decoding it all.
    bomb = _gzip(b"#" * (40 * 1024 * 1024))
    assert len(bomb) < 64 * 1024

    async def compressed(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    errors = await _failed_scrape(aiohttp_server, aiohttp_client, compressed)
    assert errors["too_large"] == 1.0


# --- where the engine is read ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        ({}, None),
        ({"engine_metrics": True}, "http://127.0.0.1:8001/prefix/metrics"),
        ({"engine_metrics_url": "http://10.0.0.7:8000"}, "http://10.0.0.7:8000/metrics"),
        ({"engine_metrics_url": "http://10.0.0.7:8000/"}, "http://10.0.0.7:8000/metrics"),
        ({"engine_metrics_url": "https://u:p@pod:9/m"}, "https://pod:9/m"),
        (
            {"engine_metrics": True, "engine_metrics_url": "http://pod:8000/metrics"},
            "http://pod:8000/metrics",
        ),
    ],
)
def test_where_the_engine_is_read(settings: dict[str, Any], url: str | None) -> None:
    config = Config(upstream_url="http://127.0.0.1:8001/prefix", model_name="m", **settings)
    assert engine_metrics_url(config) == url


def test_the_readmes_scrape_family_table_is_the_scrapers() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()
    start = readme.index("| scrape family | type | labels |")
    rows = {}
    for line in readme[start + 2 :]:
        if not line.startswith("|"):
            break
        name, kind, labels = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name.strip("`")] = (kind, labels)
    scraper = EngineScraper("http://127.0.0.1:1/metrics", 1.0, lambda: ())
    assert rows == {
        f.name: (f.type, ", ".join(sorted({k for s in f.samples for k, _ in s.labels})) or NONE)
        for f in scraper.collect()
    }


async def test_a_change_is_logged_once(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    statuses = [500, 500, 200, 200]

    async def flapping(request: web.Request) -> web.Response:
        return web.Response(status=statuses.pop(0), body=ENGINE_TEXT)

    engine = await _engine(aiohttp_server, flapping)
    now = 0.0
    url = str(engine.make_url("/metrics")).replace("http://", "http://user:secret@")
    scraper = EngineScraper(url, WAIT, lambda: (), clock=lambda: now)
    caplog.set_level(logging.INFO, "metrics_proxy")
    async with aiohttp.ClientSession() as session:
        scraper.session = session
        for _ in range(4):
            await scraper.families()
            now += 2.0
    assert [(r.levelname, r.getMessage().split(" from ")[0]) for r in caplog.records] == [
        ("WARNING", "cannot read the engine's metrics"),
        ("INFO", "reading the engine's metrics"),
    ]
    assert "secret" not in caplog.text


async def test_the_simulated_engines_page_is_vllms_shape_and_follows_its_load(
    aiohttp_server: ServerFactory,
) -> None:
    app = make_fake_upstream(Behavior(ttft=WAIT * 2), model="served")
    upstream = await aiohttp_server(app)
    state = app[FAKE_STATE]
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as http:

        async def page() -> dict[str, float]:
            async with http.get(upstream.make_url("/metrics")) as response:
                text = await response.read()
            assert parse_text(text).skipped_lines == 0
            return _series(text.decode())

        async def chat() -> None:
            async with http.post(upstream.make_url("/v1/chat/completions"), json=body) as answer:
                await answer.read()

        idle = await page()
        stream = asyncio.create_task(chat())
        try:
            await state.wait_until(lambda s: s.active == 1, WAIT)
            busy = await page()
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
    labels = '{engine="0",model_name="served"}'
    assert (
        idle[f"vllm:num_requests_running{labels}"],
        busy[f"vllm:num_requests_running{labels}"],
    ) == (0, 1)
    assert idle[f"vllm:kv_cache_usage_perc{labels}"] == 0.0
    assert 0 < busy[f"vllm:kv_cache_usage_perc{labels}"] < 1
    assert f"vllm:prompt_tokens_created{labels}" in idle  # as vLLM prints it


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"engine_metrics_url": "pod:8000/metrics"}, "--engine-metrics-url"),
        ({"engine_metrics_url": "http://pod/metrics?x=1"}, "query"),
        ({"engine_metrics_timeout": 0}, "--engine-metrics-timeout"),
    ],
)
def test_a_bad_engine_setting_is_named(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(upstream_url="http://127.0.0.1:8001", model_name="m", **settings)


def test_the_environment_turns_it_on() -> None:
    config = Config.from_env(
        {"PROXY_ENGINE_METRICS": "true", "PROXY_ENGINE_METRICS_TIMEOUT": "0.5"},
        upstream_url="http://127.0.0.1:8001",
        model_name="m",
    )
    assert (config.engine_metrics, config.engine_metrics_timeout) == (True, 0.5)
    assert "engine_metrics_url" not in repr(config)  # it may carry credentials
