"""A simulated vLLM: every API the proxy meters, in vLLM's wire format, paced and shaped by a
Behavior per request.

``python -m metrics_proxy.simulate`` serves it; ``aiohttp-proxy --simulate`` runs it beside
the proxy; the test suite's fake and the benchmarks' raw upstreams are built on it. The pure
modules (``behavior``, ``frames``, ``profile``, ``request_fields`` and the ``*_shapes``: what
vLLM writes, byte for byte) import no I/O, so a raw-asyncio upstream takes its chunks from them
without aiohttp; the aiohttp server is ``app`` (``make_simulator``), ``state`` (``Simulation``)
and the ``*_routes``. Nothing here imports the proxy.
"""
