# StreamGate: `make run` starts a single node, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEB_PACKAGES := redis-server ffmpeg systemd-container mmdebstrap haproxy
# Debian packages the tests run for real: the binaries they provide.
DEB_BINARIES := redis-server ffmpeg ffprobe systemd-nspawn mmdebstrap haproxy

.PHONY: install run test test-slow lint bench bench-transcode bench-edge loadtest system-deps bench-deps clean fleet-up fleet-down fleet-test

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python >= 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	@touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)  ## create .venv with the streamgate command in .venv/bin

run: $(STAMP)  ## single node: edge on :8080, data under ./data
	$(VENV)/bin/streamgate --config config.yaml run

# $(call ensure-debs,BINARIES,PACKAGES): install PACKAGES with apt (as root) when a binary is missing.
define ensure-debs
	@missing=""; for b in $(1); do command -v $$b >/dev/null || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(2) (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "missing:$$missing -- install them with: sudo apt-get install $(2)"; exit 1; \
	  fi; \
	fi
endef

system-deps:  ## Debian packages the tests use (installed with apt when root)
	$(call ensure-debs,$(DEB_BINARIES),$(DEB_PACKAGES))

bench-deps: system-deps  ## the references the benchmarks compare against
	$(call ensure-debs,nginx wrk,nginx wrk)

test: system-deps $(TEST_STAMP)  ## the whole suite (slow fault and load runs excluded: make test-slow)
	$(PY) -m pytest -m "not slow and not consul and not fleet" $(PYTEST_ARGS)

test-slow: system-deps $(TEST_STAMP)  ## long fault and load runs
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check edge farm control common streamgate tests bench loadtests

clean:
	rm -rf $(VENV) build *.egg-info

LOAD_STAMP := $(VENV)/.installed-load

$(LOAD_STAMP): pyproject.toml $(STAMP)
	$(PIP) install --quiet -e '.[load]'
	@touch $@

loadtest: system-deps $(TEST_STAMP) $(LOAD_STAMP)  ## bounded headless locust run against a local node it seeds (LOADTEST_ARGS="--users 50 --run-time 60s")
	$(PY) loadtests/run.py $(LOADTEST_ARGS)

bench-transcode: bench-deps $(STAMP)  ## streamgate transcode vs the ffmpeg command line (single decode, naive); BENCH_ARGS="--runs 5"
	$(PY) bench/transcode.py $(BENCH_ARGS)

bench-edge: bench-deps $(STAMP)  ## edge vs nginx under wrk (needs nginx, wrk): bytes/s, req/s, CPU per request; BENCH_ARGS="--rounds 5"
	$(PY) bench/edge.py $(BENCH_ARGS)

bench: bench-transcode bench-edge  ## every benchmark, each printing its ratios against its reference

# A fleet of nspawn hosts booting systemd, on 10.213.0.0/24 inside namespaces of its own (root;
# docs/fleet-hosts.md). FLEET_HOSTS="edge1,edge2,farm1"; the first `fleet-up` builds the Debian rootfs.
FLEET_HOSTS ?= h1,h2
FLEET_STATE ?= /var/lib/streamgate-fleet/dev

fleet-up: system-deps $(TEST_STAMP)  ## boot the hosts of FLEET_HOSTS (systemd as PID 1, sshd) and print how to ssh in
	$(PY) tests/fleet/hosts.py up --state $(FLEET_STATE) --hosts $(FLEET_HOSTS)

fleet-down: $(TEST_STAMP)  ## stop the fleet's hosts by PID and remove its namespaces, veths, mounts and state
	$(PY) tests/fleet/hosts.py down --state $(FLEET_STATE)

fleet-test: system-deps $(TEST_STAMP)  ## site.yml then rolling-update.yml over SSH into two nspawn hosts (root, minutes)
	$(PY) -m pytest tests/fleet -m fleet -s -p no:cacheprovider $(PYTEST_ARGS)
