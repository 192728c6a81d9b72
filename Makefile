.PHONY: install test lint typecheck unit bench bench-metrics run clean

PYTHON ?= python3
UPSTREAM ?= http://127.0.0.1:8001
MODEL ?= my-model

install:
	$(PYTHON) -m pip install -e '.[dev]'

lint:
	ruff check metrics_proxy tests benchmarks
	ruff format --check metrics_proxy tests benchmarks

typecheck:
	mypy

unit:
	$(PYTHON) -m pytest -q

# The README's test command: static checks first, the test suite last.
test: lint typecheck unit

# Benchmarks live apart from the tests; their figures go into BENCHMARKS.md.
bench: bench-metrics

bench-metrics:
	$(PYTHON) benchmarks/bench_metrics.py

run:
	$(PYTHON) -m metrics_proxy.proxy_server --upstream-url $(UPSTREAM) --model-name $(MODEL)

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
