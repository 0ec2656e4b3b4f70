# deepgrid: `make run` trains the main job, `make test` runs the test suite.
# Both set everything up first (idempotent: a second run only checks).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages: the Fashion-MNIST files (the main job's data); Redis and ZooKeeper, which the
# cluster tests start themselves on free loopback ports (`make run` needs no server); iproute2
# (ip, tc, ss) for the tests and benchmark that make hosts of network namespaces; chromium and its
# driver, which tests/integration/test_dashboard.py drives headless (selenium never downloads one).
APT_PACKAGES := dataset-fashion-mnist redis-server zookeeper iproute2 chromium chromium-driver

.PHONY: setup system-packages run test lint bench clean

setup: system-packages $(STAMP)

system-packages:
	@bash scripts/install-system-packages.sh $(APT_PACKAGES)

# pyproject.toml asks for torch>=2.3 (users keep their own torch); constraints.txt pins the tested
# CPU wheel, 2.13.0+cpu, for this environment, so no CUDA build is pulled in.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,cluster,plots,tensorboard,export,aws]"
	touch $(STAMP)

run: setup
	$(BIN)/deepgrid train examples/dbn.yaml

test: setup
	$(BIN)/ruff check src tests bench examples
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/bench_single.py
	$(BIN)/python bench/bench_single.py --accuracy
	$(BIN)/python bench/bench_rbm.py
	$(BIN)/python bench/bench_distributed.py --dbn
	$(BIN)/python bench/bench_hosts.py  # root only: hosts made of network namespaces

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
