"""Which module may import which: the generic Prometheus pieces stand alone, and the recorder
fills the registry without knowing how it is rendered."""

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
