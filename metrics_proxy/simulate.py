"""``python -m metrics_proxy.simulate``: a simulated vLLM on its own, for trying the proxy (or
anything OpenAI-compatible) with no GPU. Its answers are not a model's: a fixed passage, a
token at a time, at the pace and length asked for. ``aiohttp-proxy --simulate`` starts the
same beside the proxy, its knobs in ``--simulate-options``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn

from aiohttp import web
from aiohttp.log import access_logger

from metrics_proxy.simulator.app import make_simulator
from metrics_proxy.simulator.profile import Profile
from metrics_proxy.simulator.state import Simulation
from metrics_proxy.simulator.traffic import send_traffic

log = logging.getLogger("metrics_proxy.simulator")
_DEFAULTS = Profile()


class OptionsError(ValueError):
    """``--simulate-options`` holds something the simulator does not take."""


class _Parser(argparse.ArgumentParser):
    """A mistake is one line, as with aiohttp-proxy: what is wrong, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _OptionsParser(argparse.ArgumentParser):
    """The knobs inside the proxy's settings: a mistake is the proxy's to report."""

    def error(self, message: str) -> NoReturn:
        raise OptionsError(message)


def _number(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{raw!r} is not between {low:g} and {high:g}")
        return value

    return parse


_SECONDS = _number(float, 0, 3600)

# The knobs: flag, metavar, parser, default, help ("%(default)s" is argparse's).
_KNOBS: tuple[tuple[str, str, Callable[[str], float], float, str], ...] = (
    ("--ttft", "SECONDS", _SECONDS, _DEFAULTS.ttft,
     "time to the first token (default %(default)s)"),
    ("--itl", "SECONDS", _SECONDS, _DEFAULTS.itl, "time between tokens (default %(default)s)"),
    ("--output-tokens", "N", _number(int, 1, 10**6), _DEFAULTS.output_tokens,
     "tokens in an answer max_tokens does not cut (default %(default)s)"),
    ("--spread", "SIGMA", _number(float, 0, 3), _DEFAULTS.spread,
     "sigma of the log-normal answer lengths; 0: all alike (default %(default)s)"),
    ("--error-rate", "SHARE", _number(float, 0, 1), _DEFAULTS.error_rate,
     "share of requests answered with a 500, at random (default %(default)s)"),
    ("--traffic", "RPS", _number(float, 0, 1000), 0.0,
     "requests a second of background traffic to send (default 0: none)"),
)  # fmt: skip


def _add_knobs(parser: argparse.ArgumentParser) -> None:
    for flag, metavar, parse, default, text in _KNOBS:
        parser.add_argument(flag, metavar=metavar, type=parse, default=default, help=text)
    parser.add_argument("--seed", type=int, help="seed the draws: the same answers in order")


def parse_options(text: str) -> argparse.Namespace:
    """The knobs of ``aiohttp-proxy --simulate-options`` (the model and the context length
    are the proxy's, the port is the simulator's own); OptionsError for a bad one."""
    parser = _OptionsParser(prog="--simulate-options", add_help=False, allow_abbrev=False)
    _add_knobs(parser)
    try:
        return parser.parse_args(shlex.split(text))
    except ValueError as exc:  # shlex: an unclosed quote
        raise OptionsError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m metrics_proxy.simulate",
        description="A simulated vLLM (OpenAI-compatible: chat, completions, and every other "
        "API the proxy meters): realistic streams, no model. Figures are medians; each "
        "request draws its own around them, or from its `seed` when it gives one.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    add("--port", type=_number(int, 0, 65535), default=8001,
        help="port to listen on; 0 picks a free one (default 8001)")  # fmt: skip
    add("--model-name", metavar="NAME", default=_DEFAULTS.model,
        help="the served model; requests naming another get 404 (default %(default)s)")  # fmt: skip
    add("--max-model-len", metavar="TOKENS", type=_number(int, 1, 10**7),
        default=_DEFAULTS.max_model_len,
        help="context length: longer requests get vLLM's 400 (default %(default)s)")  # fmt: skip
    _add_knobs(parser)
    add("--traffic-url", metavar="URL", help="where the traffic goes, e.g. a proxy in front "
        "of this simulator (default: the simulator itself)")  # fmt: skip
    add("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def simulation_of(knobs: argparse.Namespace, model: str, max_model_len: int) -> Simulation:
    profile = Profile(
        model=model, max_model_len=max_model_len, ttft=knobs.ttft, itl=knobs.itl,
        output_tokens=knobs.output_tokens, spread=knobs.spread, error_rate=knobs.error_rate,
    )  # fmt: skip
    return Simulation(profile=profile, seed=knobs.seed)


async def start_simulator(
    simulation: Simulation, host: str, port: int, *, access_log: bool = True
) -> tuple[web.AppRunner, str]:
    """The simulator listening (its runner, to clean up) and its URL, announced at WARNING:
    whoever reads the log must know its answers are not a model's."""
    app = make_simulator(simulation)
    logger = access_logger if access_log else None
    runner = web.AppRunner(app, handler_cancellation=True, access_log=logger)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host}:{bound_port}"
    log.warning(
        "simulated vLLM serving model %s on %s: its answers are SIMULATED, no model writes them",
        simulation.model,
        url,
    )
    return runner, url


@contextlib.asynccontextmanager
async def background_traffic(
    knobs: argparse.Namespace, target: str, model: str, api_key: str = ""
) -> AsyncIterator[None]:
    """The traffic ``knobs.traffic`` asks for, to ``target``, for the block's duration."""
    if not knobs.traffic:
        yield
        return
    log.info("background traffic: %g requests a second to %s", knobs.traffic, target)
    traffic = send_traffic(target, knobs.traffic, model, api_key=api_key, seed=knobs.seed)
    task = asyncio.create_task(traffic)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM, with the background traffic asked for."""
    simulation = simulation_of(args, args.model_name, args.max_model_len)
    runner, url = await start_simulator(simulation, args.host, args.port)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        target = (args.traffic_url or url).rstrip("/")
        async with background_traffic(args, target, args.model_name):
            await stop.wait()
    finally:
        await runner.cleanup()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # e.g. the port is taken: one clear line, no traceback
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc.strerror)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
