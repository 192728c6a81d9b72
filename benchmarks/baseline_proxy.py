"""The floor for an aiohttp proxy: one ClientSession, each response streamed chunk by chunk.

No metrics, no parsing, no hop-by-hop care beyond what aiohttp needs. Prints ``PORT <n>``.
Run: python benchmarks/baseline_proxy.py UPSTREAM_URL [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource

import aiohttp
from aiohttp import web

_DROP = {"host", "connection", "content-length", "transfer-encoding", "keep-alive"}


async def serve(upstream: str, port: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
            url = upstream + request.raw_path
            async with session.request(request.method, url, headers=headers, data=body) as up:
                out = {k: v for k, v in up.headers.items() if k.lower() not in _DROP}
                response = web.StreamResponse(status=up.status, headers=out)
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()  # aiohttp's defaults, as the proxy
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream.rstrip("/"), args.port))


if __name__ == "__main__":
    main()
