"""The standard ``process_*`` and ``python_info`` series, read from /proc at scrape time."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable

from metrics_proxy.prometheus.samples import MetricFamily, Sample

_PROC = "/proc/self"


def _gauge(name: str, help_text: str, value: float) -> MetricFamily:
    return MetricFamily(name, "gauge", help_text, (Sample((), float(value)),))


class ProcessCollector:
    """What prometheus_client's process and platform collectors export, with the same
    names and help, so the usual "process" dashboards work against the proxy. On a
    system without /proc only ``python_info`` is served."""

    names = (
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_cpu_seconds",
        "process_open_fds",
        "process_max_fds",
        "python_info",
    )

    def __init__(self, proc: str = _PROC) -> None:
        self._proc = proc
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._pagesize = resource.getpagesize()
        self._boot_time = self._read_boot_time()
        version = platform.python_version_tuple()
        self._python_info = MetricFamily(
            "python_info",
            "gauge",
            "Python platform information",
            (
                Sample(
                    (
                        ("implementation", platform.python_implementation()),
                        ("major", version[0]),
                        ("minor", version[1]),
                        ("patchlevel", version[2]),
                        ("version", platform.python_version()),
                    ),
                    1.0,
                ),
            ),
        )

    def _read_boot_time(self) -> float | None:
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return None

    def collect(self) -> Iterable[MetricFamily]:
        families: list[MetricFamily] = []
        try:
            with open(os.path.join(self._proc, "stat"), "rb") as f:
                # Fields after the parenthesised command name, which may itself hold spaces.
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            return (self._python_info,)
        families.append(
            _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", int(fields[20]))
        )
        families.append(
            _gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                int(fields[21]) * self._pagesize,
            )
        )
        if self._boot_time is not None:
            families.append(
                _gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    self._boot_time + int(fields[19]) / self._ticks,
                )
            )
        cpu = (int(fields[11]) + int(fields[12])) / self._ticks
        families.append(
            MetricFamily(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (Sample((), cpu),),
            )
        )
        try:
            open_fds = len(os.listdir(os.path.join(self._proc, "fd")))
            families.append(
                _gauge("process_open_fds", "Number of open file descriptors.", open_fds)
            )
        except OSError:
            pass
        max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        families.append(
            _gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds)
        )
        families.append(self._python_info)
        return families
