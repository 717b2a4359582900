# The two commands of the README: `make demo` and `make test`.
# Both install what they need (scripts/bootstrap.sh) on a fresh Debian machine.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test lint bench clean sim-sweep drill

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
	$(PY) benchmarks/cluster_sign.py
	$(PY) benchmarks/envelope.py
	$(PY) benchmarks/recovery.py
	$(PY) benchmarks/recovery_cluster.py

# The consensus simulator over SEEDS seeds from START, in every mode or in
# MODE (base, planned, planned-torn, conservative, conservative-torn), on JOBS
# worker processes. Exits non-zero on any failure; each failing seed prints
# the command that replays it, e.g. `make sim-sweep SEEDS=2000 START=1000000`.
SEEDS ?= 200
START ?= 1000000
MODE ?= all
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

sim-sweep: setup
	$(PY) -m consensus.sim --mode $(MODE) --seed $(START) --count $(SEEDS) --jobs $(JOBS) -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

drill: setup
	$(PY) -m pytest -q tests/chaos && $(PY) -m node.cli drill run all
