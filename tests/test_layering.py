"""The shape of the code: which module may import which (the generic Prometheus pieces stand
alone, pure logic does no I/O, the recorder fills the registry without knowing how it is
rendered), and functions short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "metrics_proxy"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, plus ``module.name`` for
    each name taken from a module (a submodule may be imported that way)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_prometheus_package_imports_nothing_of_the_proxy() -> None:
    modules = sorted((PACKAGE / "prometheus").glob("*.py"))
    assert {path.stem for path in modules} >= {
        "__init__",
        "metrics",
        "registry",
        "samples",
        "snapshot",
        "exposition",
        "process",
    }
    for path in modules:
        ours = {m for m in imported_modules(path) if m.split(".")[0] == "metrics_proxy"}
        outside = {m for m in ours if not m.startswith("metrics_proxy.prometheus")}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_the_recorder_never_imports_exposition() -> None:
    rendering = {"render_text", "render_json", "format_value", "CONTENT_TYPE_TEXT"}
    for module in imported_modules(PACKAGE / "recorder.py"):
        parts = module.split(".")
        assert "exposition" not in parts, module
        assert parts[-1] not in rendering, module


# The simulated vLLM and the only proxy modules that may start it: the command that serves it
# alone, and --simulate's glue beside the server.
SIMULATOR_STARTERS = {"simulate.py", "simulated_upstream.py"}


def test_the_simulator_stands_apart_from_the_proxy() -> None:
    simulator = sorted((PACKAGE / "simulator").glob("*.py"))
    assert {path.stem for path in simulator} >= {"app", "behavior", "openai_shapes", "state"}
    for path in simulator:
        ours = {m for m in imported_modules(path) if m.split(".")[0] == "metrics_proxy"}
        outside = {m for m in ours if not m.startswith("metrics_proxy.simulator")}
        assert not outside, f"simulator/{path.name} imports {sorted(outside)}"
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "simulator" or path.name in SIMULATOR_STARTERS:
            continue
        uses = {m for m in imported_modules(path) if m.startswith("metrics_proxy.simulator")}
        assert not uses, f"{path.relative_to(PACKAGE)} imports {sorted(uses)}"


# Pure logic: no network, no server, no client; testable alone.
PURE = (
    "apis/audio.py",
    "apis/base.py",
    "apis/body_scan.py",
    "apis/chat.py",
    "apis/cohere.py",
    "apis/completions.py",
    "apis/generate_tokens.py",
    "apis/invocations.py",
    "apis/json_answer.py",
    "apis/messages.py",
    "apis/models.py",
    "apis/openai.py",
    "apis/pooling.py",
    "apis/responses.py",
    "auth.py",
    "background.py",
    "config.py",
    "engine_series.py",
    "families.py",
    "json_members.py",
    "live_view.py",
    "multipart_scan.py",
    "prometheus/sketch.py",
    "prometheus/text_parser.py",
    "record.py",
    "routes.py",
    "setting_rules.py",
    "simulator/audio_shapes.py",
    "simulator/behavior.py",
    "simulator/cohere_shapes.py",
    "simulator/engine_shapes.py",
    "simulator/frames.py",
    "simulator/messages_shapes.py",
    "simulator/metrics_shapes.py",
    "simulator/openai_shapes.py",
    "simulator/profile.py",
    "simulator/request_fields.py",
    "simulator/responses_shapes.py",
    "sse.py",
    "stream_meter.py",
    "tenant_metrics.py",
    "tenant_table.py",
    "tenants.py",
)
IO = {"aiohttp", "asyncio", "socket", "urllib.request", "http.client", "subprocess"}


def test_pure_modules_do_no_io() -> None:
    for name in PURE:
        doing_io = {
            module
            for module in imported_modules(PACKAGE / name)
            if any(module == io or module.startswith(io + ".") for io in IO)
        }
        assert not doing_io, f"{name} imports {sorted(doing_io)}"


def test_the_api_modules_are_the_only_ones_that_read_openais_json() -> None:
    # The decoder, the meter, the relay and the record ask the route's API module.
    for name in ("sse.py", "stream_meter.py", "relay.py", "record.py"):
        text = (PACKAGE / name).read_text()
        for word in ('"choices"', '"delta"', "include_usage", "stream_options"):
            assert word not in text, f"{name} reads {word}"


def test_no_function_is_longer_than_fifty_lines() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                assert length <= 50, f"{path.relative_to(PACKAGE)}: {node.name} has {length} lines"
