"""`make demo`: the proxy in front of the simulated vLLM (`python -m metrics_proxy.simulate`), a
burst of mixed traffic, its metrics."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

import aiohttp

from metrics_proxy import print_metrics

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STARTUP_SECONDS = 15.0
SETTLE_SECONDS = 5.0
STOP_SECONDS = 5.0
CONCURRENCY = 8
MODEL = "demo-model"
# The simulated vLLM: a 0.1 s TTFT, then 30 tokens 10 ms apart (0.4 s an answer, time enough to
# hang up mid-stream), and one request in ten failing with a 500.
SIMULATOR = ["--ttft", "0.1", "--itl", "0.01", "--output-tokens", "30", "--spread", "0"]
SIMULATOR += ["--error-rate", "0.1", "--model-name", MODEL, "--log-level", "WARNING"]
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}]}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time"}
# How many requests of each kind make up the burst (40 in all).
MIX = {
    "chat_stream": 16,
    "chat": 8,
    "completion": 3,
    "completion_stream": 2,
    "length_stream": 3,
    "unknown_model": 2,
    "too_long": 1,
    "malformed": 2,
    "disconnect": 2,
    "models": 1,
}


class DemoError(RuntimeError):
    """The demo could not get its two servers going."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(name: str, args: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    """Run ``python *args`` until the block ends, then SIGINT it (bounded), kill if needed."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield process, log
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within {STOP_SECONDS:g} s; killing it")
                process.kill()
                process.wait(timeout=STOP_SECONDS)


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-2000:]


async def wait_until_up(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log: IO[bytes]
) -> None:
    """Poll ``url`` until it answers 200: a port starting to listen has no event to await."""
    try:
        async with asyncio.timeout(STARTUP_SECONDS):
            while True:
                if process.poll() is not None:
                    raise DemoError(f"{url} exited during start-up:\n{_tail(log)}")
                try:
                    async with session.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise DemoError(f"{url} did not answer within {STARTUP_SECONDS:g} s") from None


def request_for(kind: str, seed: int) -> tuple[str, dict[str, object]]:
    """The path and body of one request of ``kind``. Each carries a seed, as a client may:
    the simulator then gives it the same answer every run (the same 500s among them)."""
    path, body = "/v1/chat/completions", {**CHAT, "stream": kind.endswith("_stream")}
    if kind.startswith("completion"):
        path, body = "/v1/completions", {**COMPLETION, "stream": kind.endswith("_stream")}
    body["seed"] = seed
    if kind == "length_stream":
        body["max_tokens"] = 8  # cut short: finished_reason "length"
    elif kind == "unknown_model":
        body["model"] = "gpt-4"  # vLLM's 404
    elif kind == "too_long":
        body["max_tokens"] = 100_000  # past the context length: vLLM's 400
    elif kind == "disconnect":
        body["stream"] = True
    return path, body


async def one_request(session: aiohttp.ClientSession, base: str, kind: str, seed: int) -> str:
    """Send one request of ``kind``; return how it ended (a status, or "left mid-stream")."""
    if kind == "models":
        async with session.get(base + "/v1/models") as response:
            await response.read()
            return str(response.status)
    path, body = request_for(kind, seed)
    if kind == "malformed":
        async with session.post(base + path, data=b'{"messages": [') as response:
            await response.read()
            return str(response.status)
    async with session.post(base + path, json=body) as response:
        if kind != "disconnect" or response.status != 200:
            await response.read()
            return str(response.status)
        # The role preamble arrives, the first token is still coming: hang up.
        async for line in response.content:
            if line.startswith(b"data: "):
                break
        response.close()
        return "left mid-stream"


async def send_burst(base: str) -> Counter[str]:
    kinds = [kind for kind, n in MIX.items() for _ in range(n)]
    # Interleave the kinds so every stretch of the burst is mixed.
    kinds = kinds[::2] + kinds[1::2]
    gate = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def gated(kind: str, seed: int) -> str:
            async with gate:
                return await one_request(session, base, kind, seed)

        outcomes = await asyncio.gather(*(gated(kind, i) for i, kind in enumerate(kinds)))
    return Counter(outcomes)


async def wait_for_aborts(session: aiohttp.ClientSession, url: str, expected: int) -> None:
    """A client hanging up is counted when the proxy notices: poll until it has (bounded)."""
    async with asyncio.timeout(SETTLE_SECONDS):
        while True:
            async with session.get(url) as response:
                families = (await response.json())["families"]
            success = next(f for f in families if f["name"] == "vllm:request_success_total")
            aborts = sum(
                s["value"] for s in success["samples"] if s["labels"]["finished_reason"] == "abort"
            )
            if aborts >= expected:
                return
            await asyncio.sleep(0.05)


async def drive(
    upstream: str, proxy: str, procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]]
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        await wait_until_up(session, upstream + "/health", *procs[0])
        await wait_until_up(session, proxy + "/internal/healthz", *procs[1])
        print(f"Both are up. Sending {sum(MIX.values())} mixed requests, {CONCURRENCY} at a time…")
        outcomes = await send_burst(proxy)
        print("Outcomes:", ", ".join(f"{n} x {what}" for what, n in sorted(outcomes.items())))
        try:
            await wait_for_aborts(session, proxy + "/internal/metrics", outcomes["left mid-stream"])
        except TimeoutError:
            raise DemoError(
                f"the proxy did not count the hang-ups in {SETTLE_SECONDS:g} s"
            ) from None


def main() -> int:
    upstream_port, proxy_port = free_port(), free_port()
    upstream, proxy = f"http://{HOST}:{upstream_port}", f"http://{HOST}:{proxy_port}"
    print(f"Starting the simulated vLLM on {upstream} and metrics_proxy on {proxy}…")
    simulator = ["-m", "metrics_proxy.simulate", "--host", HOST, "--port", str(upstream_port)]
    simulator += SIMULATOR
    proxy_args = ["-m", "metrics_proxy.proxy_server", "--upstream-url", upstream]
    proxy_args += ["--model-name", MODEL, "--host", HOST, "--port", str(proxy_port)]
    proxy_args += ["--max-concurrency", "4", "--log-level", "WARNING"]
    try:
        with ExitStack() as stack:
            procs = [stack.enter_context(server("the simulated vLLM", simulator))]
            procs.append(stack.enter_context(server("the proxy", proxy_args)))
            asyncio.run(drive(upstream, proxy, procs))
            print("What the proxy recorded, as `python -m metrics_proxy.print_metrics` shows it:\n")
            return print_metrics.main(["--url", proxy + "/internal/metrics"])
    except (DemoError, aiohttp.ClientError) as exc:
        print(f"demo: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        print("Stopped both servers.")


if __name__ == "__main__":
    raise SystemExit(main())
