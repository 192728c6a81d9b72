"""--simulate: the built-in simulated vLLM beside the proxy, in this process, on a loopback
port of its own, and the background traffic its options ask for, sent through the proxy.

Nothing of the simulator is imported unless --simulate asks for it: a real deployment never
loads the code that makes answers up."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any

from metrics_proxy.auth import split_tokens
from metrics_proxy.config import Config, ConfigError
from metrics_proxy.recorder import AUTO_MODEL

_OWN_HOST = "127.0.0.1"  # the simulator's interface: nothing outside this machine reaches it
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def _served_model(config: Config) -> str:
    """The model the simulator serves and the traffic asks for: --model-name, or with auto
    the simulator's own default (listed in its /v1/models, so it gets series)."""
    if config.model_name != AUTO_MODEL:
        return config.model_name
    from metrics_proxy.simulator.profile import Profile

    return Profile().model


def _knobs(config: Config) -> Any:
    from metrics_proxy.simulate import OptionsError, parse_options

    try:
        return parse_options(config.simulate_options)
    except OptionsError as exc:
        raise ConfigError(
            f"invalid value for --simulate-options (PROXY_SIMULATE_OPTIONS): {exc}",
            setting="simulate_options",
        ) from None


@contextlib.asynccontextmanager
async def simulated_upstream(config: Config) -> AsyncIterator[Config]:
    """With --simulate, the simulator serving for the block's duration and ``config``
    pointing at it (announced at WARNING); without, ``config`` as it is."""
    if not config.simulate:
        yield config
        return
    from metrics_proxy.simulate import simulation_of, start_simulator

    simulation = simulation_of(_knobs(config), _served_model(config), config.max_model_len)
    runner, url = await start_simulator(simulation, _OWN_HOST, 0, access_log=False)
    try:
        yield dataclasses.replace(config, upstream_url=url)
    finally:
        await runner.cleanup()


def own_url(addresses: Sequence[Any]) -> str:
    """The proxy's URL from this machine, from the addresses it listens on."""
    host, port = addresses[0][:2]
    host = _ANY_HOST.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def proxy_traffic(config: Config, addresses: Sequence[Any]) -> AsyncIterator[None]:
    """The background traffic --simulate-options asks for (``--traffic RPS``), through the
    proxy listening on ``addresses``, with the first client key when keys are required."""
    if not config.simulate:
        yield
        return
    from metrics_proxy.simulate import background_traffic

    keys = split_tokens(config.api_key) if config.api_key else ()
    api_key = keys[0] if keys else ""
    traffic = background_traffic(_knobs(config), own_url(addresses), _served_model(config), api_key)
    async with traffic:
        yield
