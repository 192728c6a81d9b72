.PHONY: install test lint typecheck unit storm e2e bench bench-metrics run clean demo

PYTHON ?= python3
UPSTREAM ?= http://127.0.0.1:8001
MODEL ?= my-model

install:
	$(PYTHON) -m pip install -e '.[dev]'

# The product at work with no vLLM: the fake upstream, the proxy, mixed traffic, its metrics.
demo:
	$(PYTHON) scripts/demo.py

lint:
	ruff check metrics_proxy tests benchmarks scripts
	ruff format --check metrics_proxy tests benchmarks scripts

typecheck:
	mypy

unit:
	$(PYTHON) -m pytest -q

# The fault storm of the suite, larger: every number must still equal the ground truth.
storm:
	STORM_REQUESTS=5000 $(PYTHON) -m pytest -q tests/test_fault_storm.py

# Only the end-to-end test against a real server: transformers serve and a tiny model it
# builds (`pip install -e '.[dev,e2e]'`). `make test` runs it too, and skips it where the e2e
# extra is not installed; asked for by name, it fails instead.
e2e:
	METRICS_PROXY_REQUIRE_TOOLS=1 OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -m e2e tests/e2e

# The README's test command: static checks first, the test suite last.
test: lint typecheck unit

# Benchmarks live apart from the tests; their figures go into BENCHMARKS.md.
# bench_proxy.py starts its own fake upstream, proxies and nginx (when on PATH) on 127.0.0.1,
# drives them with wrk (or its own Python load) and rewrites its BENCHMARKS.md section.
bench:
	$(PYTHON) benchmarks/bench_metrics.py && $(PYTHON) benchmarks/bench_proxy.py --write

bench-metrics:
	$(PYTHON) benchmarks/bench_metrics.py

run:
	$(PYTHON) -m metrics_proxy.proxy_server --upstream-url $(UPSTREAM) --model-name $(MODEL)

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
