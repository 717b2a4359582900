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

# Each benchmark prints its figure beside its reference in one run.
# consensus_vs_etcd installs Debian's etcd-server if it is missing (root).
bench: setup
	$(PY) benchmarks/frost_sign.py
	$(PY) benchmarks/hsm_ops.py
	$(PY) benchmarks/consensus_vs_etcd.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
