# Cube: the two commands a newcomer needs are `make up` and `make test` (see README.md).
SHELL := /bin/bash
PY := .venv/bin/python
export CUBE_STATE_DIR ?= /var/lib/cube
# QEMU's emulator (TCG) is no security boundary, so vmm_core runs guests under it only when allowed.
# A host without VT-x/AMD-V has nothing else: there make allows it (and `make up` says so).
ifeq ($(shell grep -qwE 'vmx|svm' /proc/cpuinfo || echo novirt),novirt)
export CUBE_ALLOW_TCG ?= 1
endif

.PHONY: setup lint test up down env cluster-up cluster-down cluster-env artifacts protos bench-vmm bench-envd bench-vs bench-proxy bench-api bench-template bench-volume bench-rl bench-cluster bench-density bench-idle envd-dev template-browser

setup:
	@bash scripts/setup.sh

# Lint the hand-written code (ruff, mypy; settings in pyproject.toml) and check that the generated
# code matches protos/. Runs all three checks and fails if any failed.
lint: setup
	@rc=0; \
	echo "lint: ruff"; .venv/bin/ruff check . || rc=1; \
	echo "lint: mypy"; .venv/bin/mypy || rc=1; \
	echo "lint: protos"; bash scripts/check_protos.sh || rc=1; \
	exit $$rc

# The whole test suite: lint, then unit, integration (real QEMU/TCG, etcd, Envoy, eBPF) and end-to-end.
# What the suite needs from the network is fetched first (testkit/prepare.py); the suite then runs
# in a network namespace and state dir of its own, apart from a node `make up` runs (testkit/isolated.py),
# as two pytest runs side by side: tests of parts and tests of whole nodes (testkit/suite.py).
test: setup lint
	@$(PY) -m testkit.prepare
	$(PY) -m testkit.isolated $(PY) -m testkit.suite

# Bring the whole service up on this node with the default template (first run builds it).
up: setup
	@bash scripts/node_up.sh

# Stop every service and sandbox of this node; nothing of Cube stays running.
down:
	@$(PY) -m deploy.supervisor stop

# The exports the unmodified E2B SDKs need: eval "$$(make -s env)"
env:
	@$(PY) -m deploy.env

# A cluster on this machine, laid out as on several: 3 hosts (network namespaces) each with an etcd
# member, a cubelet, CubeVS and a proxy; 2 masters; the API on the first host (deploy/cluster.py).
cluster-up: setup
	@bash scripts/local_dns.sh >/dev/null
	@$(PY) -m deploy.cluster up

cluster-down:
	@$(PY) -m deploy.cluster down

# The cluster's exports: eval "$$(make -s cluster-env)"
cluster-env:
	@$(PY) -m deploy.cluster env

artifacts: setup
	$(PY) -m services.cubelet.artifacts

protos: setup
	bash scripts/gen_protos.sh
	bash scripts/gen_envd_protos.sh

bench-vmm: setup
	$(PY) bench/vmm_bench.py

bench-envd: setup
	$(PY) bench/envd_bench.py

bench-vs: setup
	$(PY) bench/vs_bench.py

bench-proxy: setup
	$(PY) bench/proxy_bench.py

# A cluster of its own (3 hosts in network namespaces), 1 host vs 3, node loss, master failover.
bench-cluster: setup
	$(PY) bench/cluster_bench.py

# These two drive the running node (they bring it up first if it is not).
bench-api: setup
	$(PY) bench/api_bench.py

bench-template: setup
	$(PY) bench/template_bench.py

bench-volume: setup
	$(PY) bench/volume_bench.py

# The `browser` template (examples/browser: Debian's Chromium and Playwright) on the running node;
# needs the node up (`make up`). Builds only when its image changed.
template-browser: setup
	$(PY) -m examples.browser.template

# RL / SWE-bench style rollouts (examples/rl) at 10, 50 and 100 concurrent; needs the node up (`make up`).
bench-rl: setup
	$(PY) bench/rl_bench.py

# Idle code interpreters created until the node refuses or memory runs low: count, host memory and
# idle CPU per sandbox; needs the node up (`make up`).
bench-density: setup
	$(PY) bench/density_bench.py

# What an idle code interpreter costs its host (QEMU's main loop and vCPU) and what wakes its guest,
# source by source (the guest kernel's trace); needs the node up (`make up`).
bench-idle: setup
	$(PY) bench/idle_bench.py

envd-dev: setup
	bash scripts/envd_dev.sh
