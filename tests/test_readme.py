"""The README is the user's manual: its tables must match the code, so they cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.config import SETTINGS
from metrics_proxy.tenant_metrics import TenantMetrics

NONE = "\N{EN DASH}"  # how the README writes "nothing" in a table cell
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def table_rows(heading_cell: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``heading_cell``."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_every_setting_is_in_the_settings_table() -> None:
    rows = {row[1].strip("`"): row for row in table_rows("flag")}
    assert set(rows) == {setting.env for setting in SETTINGS}
    for setting in SETTINGS:
        row = rows[setting.env]
        # A setting read from the environment alone (a secret) has no flag.
        assert row[0] == (NONE if setting.env_only else f"`{setting.flag}`")
        if setting.required:
            assert row[2] == "required"
        elif setting.default in ("", None):
            assert row[2] == NONE
        else:
            shown = (
                str(setting.default).lower()
                if isinstance(setting.default, bool)
                else (
                    f"{setting.default:g}"
                    if isinstance(setting.default, float)
                    else str(setting.default)
                )
            )
            assert row[2] == f"`{shown}`", setting.flag


def test_the_metric_list_matches_the_recorder() -> None:
    recorder = ProxyMetricsRecorder("m")
    recorder.observe_http("/v1/models", "GET", 200, 0.1)  # http_* series appear on first use
    # With attribution on, the tenant families too; a request's outcome appears as it settles.
    tenants = TenantMetrics(recorder.registry, "m", "proxy", limit=1)
    record = recorder.start_request()
    record.tenant_series = tenants.account("t")
    record.finish("stop")
    families = {f.name: f for f in recorder.collect()}
    rows = {row[0].strip("`"): row for row in table_rows("family")}
    assert set(rows) == set(families)
    for name, family in families.items():
        assert rows[name][1] == family.type, name
        labels = sorted({label for sample in family.samples for label, _ in sample.labels})
        assert rows[name][2] == (", ".join(labels) or NONE), name


def test_the_two_set_up_commands_are_there() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert blocks[0].strip() == "make run"  # no vLLM needed: the simulated one
    assert blocks[1].strip() == "make test"
    assert "`make run UPSTREAM=http://127.0.0.1:8001 MODEL=my-model`" in README
