"""The proxy benchmark's machinery: pinned child processes, /proc readings, nginx and the load.

Everything listens on 127.0.0.1; every child is started in its own session and stopped by its
own process-group id; every load run is bounded in count and in time.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_cores() -> tuple[set[int], set[int], str]:
    """Cores for the process under test and for everything else (load, upstream)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available), "one core: no pinning"
    measured, rest = {available[0]}, set(available[1:])
    note = f"process under test pinned to core {available[0]}; load and upstream to {sorted(rest)}"
    return measured, rest, note


def _child_setup(cpus: set[int]) -> Callable[[], None]:
    def setup() -> None:
        os.sched_setaffinity(0, cpus)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's master and its worker)."""
    pids, index = [pid], 0
    while index < len(pids):
        task_dir = Path(f"/proc/{pids[index]}/task")
        index += 1
        try:
            for task in task_dir.iterdir():
                pids.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of the process tree, from /proc/<pid>/stat."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of the process tree, from /proc/<pid>/status."""
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@dataclass
class Child:
    """A server process we started: its name, port and process (None until started)."""

    name: str
    argv: list[str]
    port: int
    cpus: set[int]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(self.cpus),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def nginx_child(directory: Path, upstream_port: int, cpus: set[int]) -> Child:
    """An unprivileged-style nginx (everything inside directory) proxying to the upstream."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    keepalive_requests 1000000;
    upstream fast {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fast;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""
    )
    argv = ["nginx", "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    return Child("nginx", argv, port, cpus, directory / "stdout.log")


SCRIPTS = {"baseline": "baseline_proxy.py", "seed": "seed_stack_proxy.py"}


@dataclass(frozen=True)
class ProxyLane:
    """A metrics_proxy lane: its flags beyond the upstream, model, host and port."""

    flags: tuple[str, ...] = ()
    uvloop: bool = False  # run through benchmarks/proxy_wrapper.py on uvloop's event loop
    # The package from another checkout (an earlier commit, for before/after in one run).
    checkout: Path | None = None
    # Environment variables of its own (a setting with no flag, PROXY_TENANT_SALT).
    env: tuple[tuple[str, str], ...] = ()


class Servers:
    """The servers of one benchmark: its upstream (on the load cores) and each lane's server
    (on the measured core), each with a numbered log in ``directory``.

    Lanes: "direct" is the upstream itself; "nginx", "baseline" (bare aiohttp) and "seed" (the
    seed stack, benchmarks/seed_stack_proxy.py) are fixed; any other lane is metrics_proxy, as
    ``proxies`` says.
    """

    def __init__(
        self, directory: Path, upstream: Sequence[str], proxies: Mapping[str, ProxyLane]
    ) -> None:
        self.dir = directory
        self.upstream = list(upstream)  # the upstream's script and flags; --port follows
        self.proxies = dict(proxies)
        self.measured, self.load_cpus, self.pinning = split_cores()
        self._started = 0

    @contextmanager
    def stack(self, lanes: Sequence[str]) -> Iterator[dict[str, Child]]:
        """The upstream and each lane's server, started in order; all are stopped on the
        way out."""
        with ExitStack() as stack:
            upstream = self.child("upstream", "")
            stack.callback(upstream.stop)
            upstream.start()
            servers = {}
            for lane in lanes:
                child = upstream if lane == "direct" else self.child(lane, upstream.url)
                if child is not upstream:
                    stack.callback(child.stop)
                    child.start()
                servers[lane] = child
            yield servers

    def child(self, lane: str, upstream: str) -> Child:
        self._started += 1
        port = free_port()
        log = self.dir / f"{lane}-{self._started}.log"
        py = sys.executable
        if lane == "upstream":
            argv = [py, *self.upstream, "--port", str(port)]
            return Child(lane, argv, port, self.load_cpus, log)
        if lane == "nginx":
            directory = self.dir / f"nginx-{self._started}"
            return nginx_child(directory, int(upstream.rpartition(":")[2]), self.measured)
        if lane in SCRIPTS:
            argv = [py, str(BENCH / SCRIPTS[lane]), upstream, "--port", str(port)]
            return Child(lane, argv, port, self.measured, log)
        proxy = self.proxies[lane]
        flags = ["--upstream-url", upstream, "--model-name", "bench", "--host", "127.0.0.1"]
        flags += ["--port", str(port), *proxy.flags]
        argv = [py, "-m", "metrics_proxy", *flags]
        if proxy.uvloop:
            argv = [py, str(BENCH / "proxy_wrapper.py"), "--uvloop", "--", *flags]
        if proxy.checkout is not None:
            # env execs the interpreter: the pid measured is the proxy's own. -P: the working
            # directory (this checkout) must not come before the other one on sys.path.
            argv = ["env", f"PYTHONPATH={proxy.checkout}", argv[0], "-P", *argv[1:]]
        if proxy.env:
            argv = ["env", *(f"{name}={value}" for name, value in proxy.env), *argv]
        return Child(lane, argv, port, self.measured, log)


def nginx_version() -> str | None:
    if shutil.which("nginx") is None:
        return None
    out = subprocess.run(["nginx", "-v"], capture_output=True, timeout=10, check=False)
    return out.stderr.decode().strip().rpartition("/")[2] or None


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    p50: float  # seconds
    p99: float  # seconds
    window: int  # requests completed between the two probe readings
    probed: float  # the probe's reading at the window's end minus at its start
    window_seconds: float  # wall time between the two probe readings


_WRK_LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
{tenants}
local mark = {mark}
local limit = {count}
local seen = 0
function response(status, headers, body)
    seen = seen + 1
    if seen == mark then
        io.write("MARK\\n")
        io.flush()
    end
    if seen == limit then
        io.write("LIMIT\\n")
        io.flush()
        wrk.thread:stop()
    end
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("WRK %d %d %.0f %.0f\\n", summary.requests,
        e.connect + e.read + e.write + e.status + e.timeout,
        latency:percentile(50), latency:percentile(99)))
end
"""


# Each request names the next of ``tenants`` tenants (wrk.format builds it afresh).
_WRK_TENANTS = """local sent = 0
function request()
    sent = sent + 1
    wrk.headers["X-Tenant"] = "tenant-" .. (sent % {tenants})
    return wrk.format()
end"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Lua string literal for ASCII text


class Loader:
    """Runs load in its own pinned process: Debian's wrk, or benchmarks/load_client.py."""

    def __init__(self, tool: str, directory: Path, cpus: set[int]) -> None:
        self.tool = tool
        self._dir = directory
        self._cpus = cpus
        self._scripts = 0

    def requests(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        count: int,
        concurrency: int,
        seconds: float,
        probe: Callable[[], float] = lambda: 0.0,
        tenants: int = 0,
    ) -> LoadResult:
        """``count`` POSTs to the completions route at ``concurrency``, within ``seconds``;
        with ``tenants``, request i names tenant-(i mod tenants) in its X-Tenant header.

        ``probe`` (say, a process's CPU seconds) is read around a window of the run: with
        wrk, from the MARK'th response to the last one, both in the steady state with
        ``concurrency`` requests in flight (wrk drops the unfinished ones when it stops, so
        a plain before/after would count their work for nothing); with load_client.py, which
        finishes every request it starts, before and after the whole run.
        """
        target = url + "/v1/chat/completions"
        if self.tool == "wrk":
            return self._wrk(target, body, headers, count, concurrency, seconds, probe, tenants)
        options = {"body": body, "headers": headers, "count": count, "tenants": tenants}
        before = probe()
        result = self.python(
            "requests", target, **options, concurrency=concurrency, seconds=seconds
        )
        probed = probe() - before
        done = result["requests"]
        return LoadResult(
            done, result["errors"], result["p50"], result["p99"], done, probed, result["seconds"]
        )

    def _wrk(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        count: int,
        concurrency: int,
        seconds: float,
        probe: Callable[[], float],
        tenants: int,
    ) -> LoadResult:
        self._scripts += 1
        script = self._dir / f"load{self._scripts}.lua"
        lines = "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()
        )
        # Past the ramp-up, with whole waves of `concurrency` requests before it.
        mark = max(concurrency, count // 10) if count >= 3 * concurrency else 0
        lua = _WRK_LUA.format(
            body=_lua_string(body.decode()),
            headers=lines,
            tenants=_WRK_TENANTS.format(tenants=tenants) if tenants else "",
            count=count,
            mark=mark,
        )
        script.write_text(lua)
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
        argv += ["--timeout", "30s", "-s", str(script), url]
        start, started = probe(), time.monotonic()
        process = self.popen(argv)
        reader = LineReader(process)
        end: float | None = None
        ended = 0.0
        try:
            try:
                if mark:
                    reader.wait_for("MARK", seconds + 10)
                    start, started = probe(), time.monotonic()
                reader.wait_for("LIMIT", seconds + 10)
                end, ended = probe(), time.monotonic()
                # wrk keeps running to -d after its thread stops: end it (it then reports).
                process.send_signal(signal.SIGINT)
            except RuntimeError:
                pass  # the duration bound ended it first
            out = reader.rest() + process.communicate(timeout=30)[0]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        for line in out.splitlines():
            if line.startswith("WRK "):
                done, errors, p50, p99 = line.split()[1:]
                window = count - mark if end is not None else int(done) - mark
                probed = (probe() if end is None else end) - start
                elapsed = (time.monotonic() if end is None else ended) - started
                return LoadResult(
                    int(done),
                    int(errors),
                    float(p50) / 1e6,
                    float(p99) / 1e6,
                    window,
                    probed,
                    elapsed,
                )
        raise RuntimeError(f"wrk printed no summary: {out[-2000:]}")

    def python(self, mode: str, url: str, **options: Any) -> dict[str, Any]:
        """Run benchmarks/load_client.py once and return its RESULT."""
        argv = self.python_argv(mode, url, **options)
        out = self._run(argv, float(options.get("seconds", 60)) + 30)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                return result
        raise RuntimeError(f"load_client printed no result: {out[-2000:]}")

    @staticmethod
    def python_argv(mode: str, url: str, **options: Any) -> list[str]:
        argv = [sys.executable, str(BENCH / "load_client.py"), mode, url]
        for name, value in options.items():
            if name == "body":
                argv += ["--body", value.decode()]
            elif name == "headers":
                for key, item in value.items():
                    argv += ["--header", f"{key}:{item}"]
            elif name == "paths":
                for path in value:
                    argv += ["--path", path]
            else:
                argv += [f"--{name}", str(value)]
        return argv

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_child_setup(self._cpus),
            start_new_session=True,
        )

    def _run(self, argv: Sequence[str], timeout: float) -> str:
        process = self.popen(argv)
        try:
            out, _ = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:  # timed out, or we are being stopped
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if process.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {out[-2000:]}")
        return out


class LineReader:
    """Lines of a child's stdout as they come, each wait bounded in time. Reads the pipe's
    descriptor itself: a buffered reader would hide lines it already holds from select()."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._fd = process.stdout.fileno()
        self._pending = b""

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The next line starting with prefix (lines before it are dropped)."""
        deadline = time.monotonic() + timeout
        wanted = prefix.encode()
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self._pending:
                    line, _, self._pending = self._pending.partition(b"\n")
                    if line.startswith(wanted):
                        return line.decode()
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    break
                data = os.read(self._fd, 65536)
                if not data:
                    break
                self._pending += data
        raise RuntimeError(f"no {prefix!r} line within {timeout} s")

    def rest(self) -> str:
        """What was read but not consumed yet."""
        pending, self._pending = self._pending, b""
        return pending.decode(errors="replace")
