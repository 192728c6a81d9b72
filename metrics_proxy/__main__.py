"""``python -m metrics_proxy``: the proxy, as ``aiohttp-proxy`` runs it."""

from metrics_proxy.cli import main

if __name__ == "__main__":
    main()
