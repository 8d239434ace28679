# StreamGate: `make run` starts a single node, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEB_PACKAGES := redis-server ffmpeg chromium nodejs npm systemd-container mmdebstrap haproxy iproute2
# Debian packages the tests run for real: the binaries they provide (chromium, node: tests/web;
# systemd-nspawn, mmdebstrap: the fleet hosts of tests/fleet; haproxy: tests/deploy).
DEB_BINARIES := redis-server ffmpeg ffprobe chromium node npm systemd-nspawn mmdebstrap haproxy ip

.PHONY: vendor-js install run test test-slow test-chaos lint lint-deps dashboards test-container bench bench-transcode bench-edge bench-storage bench-storage-edge bench-tus-s3 loadtest system-deps bench-deps clean bench-quick bench-quality bench-catalog bench-broker bench-uploads fleet-up fleet-down fleet-test bench-upload-parallel bench-connections

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

test: system-deps $(TEST_STAMP) node_modules/.installed  ## the whole suite (slow fault and load runs excluded: make test-slow)
	$(PY) -m pytest -m "not slow and not consul and not container and not fleet" $(PYTEST_ARGS)

test-slow: system-deps $(TEST_STAMP)  ## long fault and load runs
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The long seeded chaos runs and fuzzing (issue 14); their short versions run in `make test`.
CHAOS_TESTS := tests/control/test_chaos.py tests/control/test_disk_full.py tests/common/test_fuzz_parsers.py \
	tests/edge/test_fuzz_tus.py
test-chaos: system-deps $(TEST_STAMP)  ## long fault-injection (kill -9, disk full) and fuzzing runs
	$(PY) -m pytest -m slow $(CHAOS_TESTS) $(PYTEST_ARGS)

# mypy checks the product as the `streamgate` package it is installed as (see [tool.mypy] in
# pyproject.toml): build/mypy/streamgate/ links streamgate/'s files and the four code folders.
MYPY_TREE := build/mypy/streamgate

# Debian packages `make lint` runs: promtool (from prometheus) checks and unit-tests the alert rules.
LINT_DEB_PACKAGES := prometheus
LINT_DEB_BINARIES := promtool

lint-deps:  ## the linters' Debian packages (installed with apt when root)
	$(call ensure-debs,$(LINT_DEB_BINARIES),$(LINT_DEB_PACKAGES))

lint: lint-deps $(TEST_STAMP)  ## ruff, mypy, the monitoring rules, the Dockerfile, compose.yaml, the Kubernetes manifests
	$(VENV)/bin/ruff check edge farm control common streamgate tests bench loadtests deploy
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)
	ln -s $(abspath streamgate)/*.py $(abspath edge farm control common) $(MYPY_TREE)/
	$(VENV)/bin/mypy
	promtool check rules deploy/monitoring/rules.yml
	cd deploy/monitoring && promtool test rules rules_test.yml
	$(PY) deploy/monitoring/dashboards.py --check
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
	@# Kubernetes: the overlays rendered (kubectl's built-in kustomize) when kubectl is on PATH,
	@# else the base's complete manifests one by one (overlay patches are partial objects).
	@if command -v kubectl >/dev/null; then \
	  for o in single fleet; do echo "kubernetes-validate --strict overlays/$$o"; \
	    kubectl kustomize deploy/kubernetes/overlays/$$o | $(VENV)/bin/kubernetes-validate --strict --quiet /dev/stdin || exit 1; \
	  done; \
	else \
	  echo "no kubectl: validating the base manifests without rendering the overlays"; \
	  $(VENV)/bin/kubernetes-validate --strict --quiet $$(ls deploy/kubernetes/base/*.yaml | grep -v -e kustomization -e /config.yaml); \
	fi

# Debian packages the container test runs: podman with runc (crun refuses this kernel's hybrid
# cgroups) and mmdebstrap to build the base image from Debian's packages.
CONTAINER_DEB_PACKAGES := podman runc mmdebstrap
CONTAINER_DEB_BINARIES := podman runc mmdebstrap

test-container: system-deps $(TEST_STAMP)  ## build the Dockerfile with podman, run it, upload and play a clip (root)
	$(call ensure-debs,$(CONTAINER_DEB_BINARIES),$(CONTAINER_DEB_PACKAGES))
	$(PY) -m pytest -m container tests/deploy/test_container.py -s $(PYTEST_ARGS)

dashboards: $(TEST_STAMP)  ## regenerate deploy/monitoring/dashboards/*.json (grafana-foundation-sdk)
	$(PY) deploy/monitoring/dashboards.py

clean:
	rm -rf $(VENV) build *.egg-info node_modules

# JavaScript: the web UI's libraries and the browser tests' Playwright, pinned in package-lock.json.
# npm ci runs again only when the lock file is newer than the last install.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

WEB_VENDOR := edge/web/static/vendor
vendor-js: node_modules/.installed  ## copy hls.js, dash.js, tus-js-client and their licences into the web UI (committed)
	mkdir -p $(WEB_VENDOR)
	cp node_modules/hls.js/dist/hls.min.js $(WEB_VENDOR)/hls.min.js
	cp node_modules/hls.js/LICENSE $(WEB_VENDOR)/hls.js.LICENSE.txt
	cp node_modules/dashjs/dist/modern/umd/dash.mediaplayer.min.js $(WEB_VENDOR)/dash.mediaplayer.min.js
	cp node_modules/dashjs/LICENSE.md $(WEB_VENDOR)/dashjs.LICENSE.txt
	cp node_modules/dashjs/dist/modern/umd/dash.mediaplayer.min.js.LICENSE.txt $(WEB_VENDOR)/dash.mediaplayer.min.js.LICENSE.txt
	cp node_modules/tus-js-client/dist/tus.min.js $(WEB_VENDOR)/tus.min.js
	cp node_modules/tus-js-client/LICENSE $(WEB_VENDOR)/tus-js-client.LICENSE.txt
	node -e 'const l=require("./package-lock.json").packages; for (const p of ["hls.js","dashjs","tus-js-client"]) console.log(p, l["node_modules/"+p].version)' > $(WEB_VENDOR)/VERSIONS.txt

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

bench-storage: $(TEST_STAMP)  ## aiobotocore vs obstore vs S3Store against a local SeaweedFS (the s3 backend's clients); BENCH_ARGS="--rounds 5"
	$(PY) bench/storage_client.py $(BENCH_ARGS)

bench-storage-edge: bench-deps $(STAMP)  ## an s3-backed edge: cold miss vs a direct SeaweedFS GET, warm disk cache vs nginx; BENCH_ARGS="--rounds 50"
	$(PY) bench/storage_edge.py $(BENCH_ARGS)

bench-tus-s3: $(TEST_STAMP)  ## a tus upload into SeaweedFS through an edge vs a direct multipart upload; BENCH_ARGS="--size 200 --rounds 3"
	$(PY) bench/tus_s3.py $(BENCH_ARGS)

bench-short-clip: bench-deps $(STAMP)  ## a 10 s clip through a warm farm worker vs the ffmpeg command line; BENCH_ARGS="--runs 5"
	$(PY) bench/short_clip.py $(BENCH_ARGS)

bench-first-frame: bench-deps $(TEST_STAMP) node_modules/.installed  ## tus upload's end to the first frame hls.js renders in Chromium, first segment per rung, ready
	$(PY) bench/first_frame.py $(BENCH_ARGS)

bench-concurrency: bench-deps $(STAMP)  ## eight 10 s jobs on two warm workers vs eight ffmpeg ladders, two at a time
	$(PY) bench/concurrency.py $(BENCH_ARGS)

bench-quality: bench-deps $(STAMP)  ## PSNR/SSIM/bitrate per rung: streamgate transcode vs the ffmpeg command line; BENCH_ARGS="--seconds 10"
	$(PY) bench/quality.py $(BENCH_ARGS)

bench-catalog: system-deps $(TEST_STAMP)  ## GET /api/v1/videos p99 at 1k, 10k, 100k videos, SQLite and Redis; BENCH_ARGS="--requests 300"
	$(PY) bench/catalog.py $(BENCH_ARGS)

bench-broker: system-deps $(TEST_STAMP)  ## broker submit jobs/s (durable journal, group commit) and journal size after 100k finished jobs
	$(PY) bench/broker.py $(BENCH_ARGS)

bench-upload-parallel: $(STAMP)  ## streamgate upload 1 vs 4 parallel parts (tus concatenation) vs write+fsync, disk backend; BENCH_ARGS="--quick"
	$(PY) bench/upload_parallel.py $(BENCH_ARGS)

bench-connections: bench-deps $(STAMP)  ## RSS per idle keep-alive connection, edge vs nginx (10k from one client); BENCH_ARGS="--connections 5000"
	$(PY) bench/connections.py $(BENCH_ARGS)

bench-uploads: system-deps $(TEST_STAMP)  ## tus PATCH MiB/s with sha256 vs write+fsync of the same chunks, and @tus/server (npm, temp dir)
	$(PY) bench/uploads.py $(BENCH_ARGS)

# Every benchmark in bench/, one after another (they share the CPUs): each prints its ratios
# against its reference run in the same invocation and the load average. BENCH_ARGS=--quick: a smoke run.
BENCHES := bench-transcode bench-edge bench-connections bench-storage bench-storage-edge bench-tus-s3 bench-quality bench-catalog bench-broker bench-uploads bench-upload-parallel bench-short-clip bench-first-frame bench-concurrency
bench:  ## every benchmark, each printing its ratios against its reference and the load average
	@for b in $(BENCHES); do echo "== make $$b"; $(MAKE) --no-print-directory $$b || exit 1; done

bench-quick:  ## every benchmark's --quick mode (tiny sizes, one round)
	@$(MAKE) --no-print-directory bench BENCH_ARGS=--quick

# A fleet of nspawn hosts booting systemd, on 10.213.0.0/24 inside namespaces of its own (root;
# docs/fleet-hosts.md). FLEET_HOSTS="edge1,edge2,farm1"; the first `fleet-up` builds the Debian rootfs.
FLEET_HOSTS ?= h1,h2
FLEET_STATE ?= /var/lib/streamgate-fleet/dev

fleet-up: system-deps $(TEST_STAMP)  ## boot the hosts of FLEET_HOSTS (systemd as PID 1, sshd) and print how to ssh in
	$(PY) tests/fleet/hosts.py up --state $(FLEET_STATE) --hosts $(FLEET_HOSTS)

fleet-down: $(TEST_STAMP)  ## stop the fleet's hosts by PID and remove its namespaces, veths, mounts and state
	$(PY) tests/fleet/hosts.py down --state $(FLEET_STATE)

fleet-test: system-deps $(TEST_STAMP) $(LOAD_STAMP)  ## the operator's day on six nspawn hosts under locust load through HAProxy: rolling updates, kills, a bad release (root, ~30 min)
	$(PY) -m pytest tests/fleet -m fleet -s -p no:cacheprovider $(PYTEST_ARGS)
