"""``transformers serve`` in its own process, on a free loopback port, serving a tiny model
built for it: nothing downloaded, no network but 127.0.0.1."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from tests.support.processes import ROOT, environ_without_settings, free_port

# What `pip install -e '.[e2e]'` brings: without any of them there is no server to run.
MODULES = ("torch", "transformers", "tokenizers", "fastapi", "uvicorn")
# Seconds. Generous: importing torch and transformers on a busy 2-core machine takes a while.
BUILD_TIMEOUT = 180.0
START_TIMEOUT = 180.0
STOP_TIMEOUT = 10.0
POLL = 0.1
# The tiny model's tokenizer (Metaspace) spells each word of its vocabulary after this mark.
WORD_START = "\u2581"


@dataclass(frozen=True)
class RealServer:
    """A running ``transformers serve``: its base URL, the model folder it serves (also the
    name it answers to), the model's vocabulary, and its log."""

    url: str
    model: Path
    vocabulary: dict[str, int]
    log: Path

    def token_id(self, word: str) -> int:
        """The id of the one token a word of the tiny model's language is."""
        return self.vocabulary[WORD_START + word]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def server_environ(workdir: Path) -> dict[str, str]:
    """One thread (two cores, shared with the tests), the hub switched off, every cache in
    ``workdir``: a model load that tried to download would fail at once."""
    return environ_without_settings() | {
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(workdir / "hf-home"),
    }


def build_model(folder: Path, env: dict[str, str]) -> None:
    """The tiny model, built by tests/e2e/tiny_model.py in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.tiny_model", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


# Straight to loopback, whatever HTTP proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with _DIRECT.open(url + "/health", timeout=POLL * 10) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_until_healthy(server: RealServer, process: subprocess.Popen[bytes]) -> None:
    """Poll /health (bounded): nothing tells when uvicorn has bound its port."""
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(server.url):
        assert process.poll() is None, f"transformers serve exited:\n{server.log_tail()}"
        assert time.monotonic() < deadline, (
            f"transformers serve never answered:\n{server.log_tail()}"
        )
        time.sleep(POLL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def transformers_serve(workdir: Path) -> Iterator[RealServer]:
    """Build the tiny model in ``workdir``, serve it (pinned with ``force_model``, loaded at
    start) and stop the server however the block ends."""
    env = server_environ(workdir)
    model = workdir / "tiny-llama"
    build_model(model, env)
    vocabulary = orjson.loads((model / "tokenizer.json").read_bytes())["model"]["vocab"]
    port = free_port()
    server = RealServer(f"http://127.0.0.1:{port}", model, vocabulary, workdir / "serve.log")
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with server.log.open("wb") as log:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=log)
    try:
        wait_until_healthy(server, process)
        yield server
    finally:
        _stop(process)
