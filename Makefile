# `make test`: install everything, lint, run the CPU test suite. `make demo`: the CPU demo.
VENV := $(or $(MMVMAMBA_VENV),.venv)
PY := $(VENV)/bin/python

.PHONY: env lint test demo

env:
	bash tools/setup_env.sh

lint: env
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest tests -m "not gpu" -ra --durations=15

demo: env
	bash tools/run_demo.sh
