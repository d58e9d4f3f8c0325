# The README's two commands: `make run` (the service on the bundled model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench bench-service validate-deploy clean

# torch/torchvision first and pinned: they install from this machine's disk; a looser
# requirement would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/unclip serve

# Every test, the `slow` ones included (model quality, worker and server processes, CLI runs);
# CI runs this one.
test: $(STAMP)
	$(BIN)/pytest -q

# The edit loop: everything but the tests marked `slow`.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

# The checks .ci/run and .pre-commit-config.yaml run too; mypy's files and flags are in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Ours against diffusers' UnCLIPPipeline, interleaved in one process (docs/benchmark.md); diffusers
# comes from the benchmark's own extra. BENCH_ARGS narrows a run, e.g. BENCH_ARGS="--batches 1 8".
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
	$(BIN)/python -m bench.service_overhead

# What the service adds to a job besides the model (a real API, worker and Redis): a minute or two.
bench-service: $(STAMP)
	$(BIN)/python -m bench.service_overhead

# Checks that run without a Docker engine (tools: see deploy/README.md).
validate-deploy: $(STAMP)
	GRAFANA_ADMIN_PASSWORD=validate-only UNCLIP_WEIGHTS_HOST_DIR=/srv/w UNCLIP_WEIGHTS_VERSION=v1 \
	  docker compose -f docker-compose.yml config -q
	$(BIN)/hadolint Dockerfile
	$(BIN)/pytest -q tests/test_deploy_files.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
