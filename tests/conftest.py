"""The shared fixtures live in tests/support/, loaded here as plugins."""

pytest_plugins = ("tests.support.stack", "tests.support.tools", "tests.support.processes")
