"""The ``aiohttp-proxy`` command: flags and ``PROXY_*`` environment → Config → run."""

from __future__ import annotations

import argparse
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import NoReturn

from metrics_proxy import __version__
from metrics_proxy.config import SETTINGS, Config, ConfigError, Setting, SettingCorrected

__all__ = ["build_parser", "main", "parse_config"]

_DESCRIPTION = (
    "An aiohttp proxy for OpenAI-compatible servers that records vLLM's Prometheus metrics. "
    "Every flag can also be set through its PROXY_* environment variable; "
    "a flag beats the environment, which beats the default."
)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help(setting: Setting) -> str:
    # Values set in the environment are never echoed: the URL or a key may hold a secret.
    env = setting.env
    default = "required" if setting.required else f"default {_show(setting.default)}"
    # argparse %-formats help strings.
    return f"{setting.help} (env {env}, {default})".replace("%", "%%")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage block above it): the line that says
    what is wrong is all an operator reads, and ``--help`` has the rest."""

    def error(self, message: str) -> NoReturn:
        # One line whatever was typed: argparse quotes an unknown argument as it came.
        line = _CONTROL.sub(lambda found: repr(found[0])[1:-1], message)
        self.exit(2, f"{self.prog}: error: {line}\n")


def installed_version() -> str:
    """The installed package's version, as pip and the wheel know it; the source's own where
    the package runs uninstalled (from a checkout, say)."""
    try:
        return metadata.version("metrics-proxy")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The parser, one flag per setting, each help naming its env var and default.

    Every flag defaults to None ("not given") and values stay text: parsing, checking and the
    precedence flag > env > default all happen in :meth:`Config.from_env`, in one place.
    """
    parser = _Parser(prog="aiohttp-proxy", description=_DESCRIPTION, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    for setting in SETTINGS:
        if setting.env_only:
            continue
        if setting.kind is bool:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_true",
                default=None,
                help=_help(setting),
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                metavar=setting.metavar,
                help=_help(setting),
            )
    return parser


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    """Parse ``argv`` (``sys.argv[1:]`` when None) over ``environ``; exit 2 on any bad setting."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    given = {name: value for name, value in args.items() if value is not None}
    try:
        return Config.from_env(environ, **given)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``aiohttp-proxy``."""
    with warnings.catch_warnings(record=True) as corrections:
        warnings.simplefilter("always", SettingCorrected)
        config = parse_config(argv, os.environ)
    # Imported late so a settings mistake exits before the server stack loads.
    from metrics_proxy.log_format import configure_logging
    from metrics_proxy.server import run_app

    configure_logging(config.log_level, config.log_format)
    for correction in corrections:  # said once the log is set up, in its format
        logging.getLogger("metrics_proxy").warning("%s", correction.message)

    try:
        run_app(config)
    except ConfigError as exc:  # found only when used, e.g. an unreadable CA bundle
        build_parser().error(str(exc))


if __name__ == "__main__":
    main()
