# gpufleet: `make demo` sets up and runs the main job; `make test` sets up and runs every test.
PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH):/usr/local/go/bin

.PHONY: setup system-deps binaries lint unit e2e test demo crds bench clean
.DEFAULT_GOAL := test

setup: $(STAMP) system-deps binaries

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,aws]'
	touch $@

# Prometheus comes from Debian; the test bed runs its own process on loopback.
system-deps:
	@command -v prometheus >/dev/null || { \
	  echo "installing prometheus (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# etcd, Kubernetes, kwok, kubectl and helm built from pinned Go modules, cached by version.
binaries:
	bash e2e/build.sh

# The CRDs, their copy in the chart, and the kustomize base rendered from the chart.
crds: $(STAMP)
	$(VENV)/bin/gpufleet crds
	$(VENV)/bin/gpufleet crds --dir charts/gpufleet/crds
	$(PY) tests/chart/kustomize_base.py --write

lint: $(STAMP)
	$(VENV)/bin/ruff check operator e2e tests benchmarks
	$(VENV)/bin/ruff format --check operator e2e tests benchmarks
	$(VENV)/bin/mypy operator/gpufleet e2e/gpufleet_testbed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/gpufleet crds --check
	$(VENV)/bin/gpufleet crds --check --dir charts/gpufleet/crds

unit: $(STAMP)
	$(PY) -m pytest -m "not e2e"

e2e: setup
	$(PY) -m pytest -m e2e

# The README's test command: lint, then every test, e2e included, on the local control plane.
test: setup lint
	$(PY) -m pytest

# The README's main command.
demo: setup
	$(PY) -m gpufleet_testbed.demo

# On demand, not in CI: each prints one JSON line of its figures last.
TRACES ?= ../shared/traces
bench: setup
	$(PY) benchmarks/planner_scale.py
	$(PY) benchmarks/loop_tick.py
	$(PY) benchmarks/fleet_traces.py --traces $(TRACES)
	$(PY) benchmarks/reaction.py --out benchmarks/results/reaction.json
	$(PY) benchmarks/prometheus_reads.py
	$(PY) benchmarks/footprint.py --out benchmarks/results/footprint.json

clean:
	-$(PY) -m gpufleet_testbed down --all 2>/dev/null
	rm -rf .e2e .mypy_cache .ruff_cache .pytest_cache
