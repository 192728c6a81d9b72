"""The engine's /metrics, read for the proxy's own (--engine-metrics): one fetch at a time,
bounded in time and size, its result kept for a second so that scrapes close together share
it, and its outcome in the proxy_engine_scrape_* series.

A slow or dead engine costs a scrape at most --engine-metrics-timeout, and then the proxy's
own series render without the engine's. Only the event loop touches it (no locks)."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import hdrs

from metrics_proxy import families
from metrics_proxy.config import Config
from metrics_proxy.engine_series import join
from metrics_proxy.families import EngineScrapeError
from metrics_proxy.prometheus.exposition import RenderedFamily, pre_render
from metrics_proxy.prometheus.metrics import Counter, Gauge
from metrics_proxy.prometheus.samples import MetricFamily
from metrics_proxy.prometheus.text_parser import Limits, parse_text
from metrics_proxy.setting_rules import mask_url, split_credentials

log = logging.getLogger("metrics_proxy")

# Long enough that Prometheus servers scraping one proxy (an HA pair) share a fetch, short
# enough that a gauge is never older than a scrape interval makes it anyway.
CACHE_SECONDS = 1.0
# vLLM prints about 400 series per engine; room for many data-parallel ranks and adapters.
LIMITS = Limits(max_bytes=8 * 1024 * 1024, max_line=64 * 1024, max_series=20_000)
# The text format, uncompressed (the engine's prometheus_client gzips only when asked).
_HEADERS = {"Accept": "text/plain; version=0.0.4", "Accept-Encoding": "identity"}
# The encodings decoded all the same (zlib's window bits for each: gzip's header, zlib's).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class _Failed(Exception):
    """The fetch gave nothing usable, for this reason."""

    def __init__(self, kind: EngineScrapeError) -> None:
        super().__init__(kind.value)
        self.kind = kind


def engine_metrics_url(config: Config) -> str | None:
    """Where the engine's /metrics is read, or None when it is not: --engine-metrics-url, or
    with --engine-metrics the upstream's /metrics (vLLM serves it on its API port); a URL
    with no path gets /metrics too. Never with credentials: vLLM's /metrics needs none, and
    none are lent to it."""
    if config.engine_metrics_url:
        url = split_credentials(config.engine_metrics_url)[0]
        return url if urlsplit(url).path else url + "/metrics"
    if config.engine_metrics:
        return split_credentials(config.upstream_url)[0] + "/metrics"
    return None


class EngineScraper:
    """Reads ``url`` for each scrape of the proxy, at most one fetch in flight, and joins
    the engine's families to ``ours()`` (the proxy's, collected). A collector itself: its
    proxy_engine_scrape_* series go in the proxy's registry."""

    def __init__(
        self,
        url: str,
        timeout: float,
        ours: Callable[[], Sequence[MetricFamily]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.timeout, self._ours, self._clock = url, timeout, ours, clock
        self.session: aiohttp.ClientSession | None = None  # the app's, once it is open
        self._up = _gauge(families.ENGINE_SCRAPE_UP)
        self._duration = _gauge(families.ENGINE_SCRAPE_DURATION)
        errors = Counter(*_described(families.ENGINE_SCRAPE_ERRORS))
        self._errors = {kind: errors.labels(kind.value) for kind in EngineScrapeError}
        self._metrics = (self._up, self._duration, errors)
        self._kept: tuple[RenderedFamily, ...] = ()
        self._kept_at = -CACHE_SECONDS
        self._fetch: asyncio.Task[tuple[RenderedFamily, ...]] | None = None
        self._was_up: bool | None = None  # at the last fetch; None before the first

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for metric in self._metrics for name in metric.names)

    def collect(self) -> Iterable[MetricFamily]:
        for metric in self._metrics:
            yield from metric.collect()

    async def families(self) -> tuple[RenderedFamily, ...]:
        """The engine's families to print with the proxy's: fresh, the last second's, or
        none when the engine did not answer well in time."""
        if self._clock() - self._kept_at < CACHE_SECONDS:
            return self._kept
        if self._fetch is None:
            self._fetch = asyncio.create_task(self._fetched())
        # Shielded: a scraper that leaves must not cancel the fetch others are waiting for.
        return await asyncio.shield(self._fetch)

    async def close(self) -> None:
        """Before the session closes: a fetch still running ends now, and none starts."""
        self.session = None
        fetch = self._fetch
        if fetch is not None:
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)

    async def _fetched(self) -> tuple[RenderedFamily, ...]:
        started = self._clock()
        failure: EngineScrapeError | None = None
        cause: str | None = None  # the failure as logged
        try:
            body = await self._read()
            # Parsed, joined and formatted off the event loop: a large page (many ranks or
            # adapters), or many models' series of the proxy's, must not stall the requests in
            # flight. The proxy's series are read on the loop, as collected families (frozen).
            kept = self._counted(await asyncio.to_thread(_joined, body, tuple(self._ours())))
        except _Failed as failed:
            failure, kept = failed.kind, ()
            cause = failure.value
        except Exception as error:  # a bug must not turn /metrics into a 500
            failure, kept = EngineScrapeError.INTERNAL, ()
            cause = f"{failure.value}: {type(error).__name__}"  # its message may quote the page
        finally:
            self._fetch = None
        if failure is not None:
            self._errors[failure].inc()
        self._log_change(cause)
        self._up.set(0.0 if failure else 1.0)
        self._duration.set(self._clock() - started)
        self._kept, self._kept_at = kept, self._clock()
        return kept

    def _log_change(self, failure: str | None) -> None:
        """Logs a change of the engine's state, with the ``failure`` that made it (a kind,
        or an unexpected exception's type)."""
        # Once per change, not per scrape: a dead engine must not fill the log.
        if (failure is None) == self._was_up:
            return
        self._was_up = failure is None
        if failure is None:
            log.info("reading the engine's metrics from %s", mask_url(self.url))
        else:
            log.warning(
                "cannot read the engine's metrics from %s (%s): /metrics has the proxy's own "
                "series only until it can",
                mask_url(self.url),
                failure,
            )

    def _counted(self, joined: _Joined) -> tuple[RenderedFamily, ...]:
        self._errors[EngineScrapeError.INVALID_LINE].inc(joined.skipped_lines)
        self._errors[EngineScrapeError.CONFLICT].inc(joined.conflicts)
        return joined.rendered

    async def _read(self) -> bytes:
        if self.session is None:
            raise _Failed(EngineScrapeError.CONNECT)
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session.get(
                    self.url, headers=_HEADERS, allow_redirects=False
                ) as response:
                    if response.status != 200:
                        raise _Failed(EngineScrapeError.STATUS)
                    return await _bounded_body(response, LIMITS.max_bytes)
        except TimeoutError:
            raise _Failed(EngineScrapeError.TIMEOUT) from None
        except (aiohttp.ClientError, OSError):
            raise _Failed(EngineScrapeError.CONNECT) from None


@dataclass(frozen=True, slots=True)
class _Joined:
    """What a fetch keeps: the engine's families that join ours, formatted, and what was
    left out on the way."""

    rendered: tuple[RenderedFamily, ...]
    skipped_lines: int
    conflicts: int


def _joined(body: bytes, ours: Sequence[MetricFamily]) -> _Joined:
    """The engine's page read and joined to ``ours``; pure, so it runs in a worker thread."""
    parsed = parse_text(body, LIMITS)
    joined = join(ours, parsed.families)
    # Formatted once here, not at each scrape the result serves.
    return _Joined(pre_render(joined.families), parsed.skipped_lines, joined.conflicts)


async def _bounded_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decoded, or _Failed(too_large) as soon as it is past ``limit`` bytes
    (decoded: a small compressed answer may decode to gigabytes, and never does here)."""
    decoder = _decoder(response.headers.get(hdrs.CONTENT_ENCODING, ""))
    length = response.content_length
    if length is not None and length > limit:
        raise _Failed(EngineScrapeError.TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_chunked(64 * 1024):
            if decoder is not None:
                # One byte past what is left is enough to know it is too large.
                chunk = decoder.decompress(chunk, limit - size + 1)
            size += len(chunk)
            if size > limit:
                raise _Failed(EngineScrapeError.TOO_LARGE)
            chunks.append(chunk)
    except zlib.error:
        raise _Failed(EngineScrapeError.ENCODING) from None
    if decoder is not None and not (decoder.eof and not decoder.unused_data):
        raise _Failed(EngineScrapeError.ENCODING)  # cut short, or more after its end
    return b"".join(chunks)


def _decoder(content_encoding: str) -> zlib._Decompress | None:
    """How to decode an answer in ``content_encoding``: the engine is asked for none, but a
    server on the way may compress anyway. gzip and deflate are decoded, bounded by the
    caller; any other (br, zstd, a chain of them) is refused, not parsed as garbage."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in _WBITS:
        return zlib.decompressobj(_WBITS[encoding])
    raise _Failed(EngineScrapeError.ENCODING)


def _described(spec: families.FamilySpec) -> tuple[str, str, tuple[str, ...]]:
    return spec.name, spec.help, spec.labels


def _gauge(spec: families.FamilySpec) -> Gauge:
    return Gauge(*_described(spec))
