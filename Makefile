# The two commands of the README: `make demo` and `make test`.
# Both install what they need (scripts/bootstrap.sh) on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test lint bench clean

setup:
	@scripts/bootstrap.sh

demo: setup
	$(PY) -m node.demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) benchmarks/frost_sign.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
