"""Run the real proxy command with uvloop and/or cProfile around it (benchmarking only).

Run: python benchmarks/proxy_wrapper.py [--uvloop] [--profile OUT.prof] -- PROXY FLAGS...
The profile is written when the proxy stops (SIGINT or SIGTERM end aiohttp's run_app cleanly).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib

from metrics_proxy.cli import main as proxy_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--profile", metavar="PATH", help="write cProfile stats here at exit")
    parser.add_argument("proxy_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    proxy_args = args.proxy_args[1:] if args.proxy_args[:1] == ["--"] else args.proxy_args
    if args.uvloop:
        # Imported by name: uvloop is an optional, local-only benchmark dependency.
        uvloop = importlib.import_module("uvloop")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.profile is None:
        proxy_main(proxy_args)
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        proxy_main(proxy_args)
    finally:
        profiler.disable()
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    main()
