.PHONY: install test lint typecheck unit storm e2e bench bench-metrics run clean demo

# Every target runs in the project's own virtualenv, made here on first use: nothing is
# taken from PATH, and a PEP 668 system Python (stock Debian) is never installed into.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev
# `make run UPSTREAM=http://... MODEL=...` proxies a real server; without UPSTREAM it serves
# from the built-in simulated vLLM, whose knobs SIMULATE holds (e.g. SIMULATE="--traffic 2").
UPSTREAM ?=
MODEL ?= my-model
SIMULATE ?=

comma := ,
PY := $(VENV)/bin/python
# One stamp per set of extras: asking for more installs them.
INSTALLED := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(PY):
	@$(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || { rm -rf $(VENV); \
	  echo "$(PYTHON) -m venv failed: install the venv module (Debian: apt-get install python3-venv)" >&2; \
	  exit 1; }

$(INSTALLED): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

install: $(INSTALLED)

# The product at work with no vLLM: the simulated vLLM, the proxy, mixed traffic, its metrics.
demo: $(INSTALLED)
	$(PY) scripts/demo.py

lint: $(INSTALLED)
	$(PY) -m ruff check metrics_proxy tests benchmarks scripts
	$(PY) -m ruff format --check metrics_proxy tests benchmarks scripts

typecheck: $(INSTALLED)
	$(PY) -m mypy

unit: $(INSTALLED)
	$(PY) -m pytest -q

# The fault storm of the suite, larger: every number must still equal the ground truth.
storm: $(INSTALLED)
	STORM_REQUESTS=5000 $(PY) -m pytest -q tests/test_fault_storm.py

# Only the end-to-end test against a real server: transformers serve and a tiny model it
# builds (the e2e extra: torch's CPU wheel and transformers). `make test` runs it too where
# that extra is installed and skips it elsewhere; asked for by name, it fails instead.
e2e:
	$(MAKE) install EXTRAS=dev,e2e
	METRICS_PROXY_REQUIRE_TOOLS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m e2e tests/e2e

# The README's test command: static checks first, the test suite last.
test: lint typecheck unit

# Benchmarks live apart from the tests; their figures go into BENCHMARKS.md.
# bench_proxy.py starts its own fake upstream, proxies and nginx (when on PATH) on 127.0.0.1,
# drives them with wrk (or its own Python load) and rewrites its BENCHMARKS.md section.
# bench_stream_rate.py paces C streams at an engine's step (5k-30k chunks/s) through each lane,
# rewrites its section and redraws the saturation curve BENCHMARKS.md shows.
# The bench extra brings the seed stack (FastAPI, uvicorn, httpx, prometheus-client), the
# reference lane bench_proxy.py holds the proxy's throughput against.
bench:
	$(MAKE) install EXTRAS=dev,bench
	$(PY) benchmarks/bench_metrics.py && $(PY) benchmarks/bench_proxy.py --write
	$(PY) benchmarks/bench_stream_rate.py --write --svg benchmarks/results/stream_rate.svg

bench-metrics: $(INSTALLED)
	$(PY) benchmarks/bench_metrics.py

run: $(INSTALLED)
ifeq ($(strip $(UPSTREAM)),)
	$(PY) -m metrics_proxy --simulate$(if $(strip $(SIMULATE)), --simulate-options '$(SIMULATE)') --model-name $(MODEL) --engine-metrics
else
	$(PY) -m metrics_proxy --upstream-url $(UPSTREAM) --model-name $(MODEL)
endif

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
