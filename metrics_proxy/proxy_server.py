"""``python -m metrics_proxy.proxy_server``: the spelling users know for the proxy's command
(cli.py holds it), kept beside ``aiohttp-proxy`` and ``python -m metrics_proxy``."""

from metrics_proxy.cli import build_parser, main, parse_config

__all__ = ["build_parser", "main", "parse_config"]

if __name__ == "__main__":
    main()
