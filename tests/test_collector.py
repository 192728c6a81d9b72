"""What serving sets of CPython's cyclic garbage collector: what it was started with kept out
of the collector's scans, and young collections left to real growth rather than set off by
the objects of the requests in flight (see metrics_proxy.server.YOUNG_COLLECTION_THRESHOLD)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from metrics_proxy.config import Config
from metrics_proxy.log_safety import GUARDED_LOGGERS
from metrics_proxy.server import YOUNG_COLLECTION_THRESHOLD, serve
from tests.support.processes import free_port


class _Listening(logging.Handler):
    """Sets ``event`` when the proxy logs that it is listening."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.INFO)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("metrics_proxy listening on"):
            self.event.set()


@pytest.fixture
def process_restored() -> Iterator[None]:
    """serve() tunes the whole process's collector and guards its loggers: put this test
    process's back as they were."""
    threshold = gc.get_threshold()
    loggers = [logging.getLogger(name) for name in GUARDED_LOGGERS]
    filters = [list(logger.filters) for logger in loggers]
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        for logger, kept in zip(loggers, filters, strict=True):
            logger.filters[:] = kept


@pytest.mark.usefixtures("process_restored")
async def test_serving_leaves_young_collections_to_real_growth() -> None:
    _, *older = gc.get_threshold()
    listening, stop = asyncio.Event(), asyncio.Event()
    logger = logging.getLogger("metrics_proxy")
    handler, level = _Listening(listening), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    config = Config(
        upstream_url="http://127.0.0.1:9", model_name="m", host="127.0.0.1", port=free_port()
    )
    serving = asyncio.create_task(serve(config, stop=stop))
    try:
        async with asyncio.timeout(20):
            await listening.wait()
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *older)
        assert YOUNG_COLLECTION_THRESHOLD >= 10_000
        assert gc.get_freeze_count() > 0
    finally:
        stop.set()
        logger.removeHandler(handler)
        logger.setLevel(level)
        async with asyncio.timeout(20):
            await serving
