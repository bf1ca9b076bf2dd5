# befa: the README's two commands are `make demo` (main job) and `make test` (tests).
# Both set up the venv from nothing; re-running setup on an up-to-date venv is a no-op,
# because the venv is keyed on the hash of the dependency lock.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCK_HASH := $(shell cat requirements.lock pyproject.toml Makefile 2>/dev/null | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(LOCK_HASH)

# Where raw datasets live (CI: ../shared/datasets). Override: make demo BEFA_DATASETS_ROOT=/data
export BEFA_DATASETS_ROOT ?= $(abspath ../shared/datasets)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv chromium demo test bench bench-store bench-ingest bench-extract bench-train bench-recommend bench-quality bench-study bench-study-full bench-lattice-mgcn bench-scale bench-batch-rule bench-vs-reference bench-gpu lock clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	@# ImageBind's package declares audio/video deps that do not resolve beside torch 2.14; its model code needs none of them.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps imagebind-unofficial==0.1.1
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv
	$(BIN)/python -m flows.demo

# The study report test renders HTML in Debian's headless Chromium.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: venv chromium
	$(BIN)/python -m pytest -q

bench: bench-store bench-ingest bench-extract bench-train bench-recommend

bench-store: venv
	$(BIN)/python -m benchmarks.bench_store

bench-ingest: venv
	$(BIN)/python -m benchmarks.bench_ingest

bench-extract: venv
	$(BIN)/python -m benchmarks.bench_extract

bench-train: venv
	$(BIN)/python -m benchmarks.bench_train

# users/s and memory of `befa recommend`'s scoring at amazon-baby size and 10x its users (speed only)
bench-recommend: venv
	$(BIN)/python -m benchmarks.bench_recommend

bench-study: venv
	$(BIN)/python -m benchmarks.bench_study

# The study at the full protocol (1000 epochs, patience 10, 3 seeds, EfficientNet-Lite2 + MiniLM,
# cold items and 25% sparsity); hours. Resumable: run it again to continue where it stopped.
bench-study-full: venv
	$(BIN)/python -m benchmarks.bench_study_full

bench-lattice-mgcn: venv
	$(BIN)/python -m benchmarks.bench_lattice_mgcn --threads 2

# befa's epoch beside the reference toolbox's recorded epoch times (movielens 1 thread, amazon-baby 2 threads)
bench-vs-reference: venv
	$(BIN)/python -m benchmarks.bench_vs_reference $(ARGS)

# growth with catalog size (1x, 4x, 16x amazon-baby; speed only); ARGS=--knn: approximate vs exact kNN graph
bench-scale: venv
	$(BIN)/python -m benchmarks.bench_scale $(ARGS)

# the opt-in large-catalog batching rule on real interactions: quality and time to the best epoch against the protocol
bench-batch-rule: venv
	$(BIN)/python -m benchmarks.bench_batch_rule $(ARGS)

# the GPU check, ~8 min on one CUDA GPU; refuses (exit 2) without one; ARGS=--quick for a short run
bench-gpu: venv
	$(BIN)/python -m benchmarks.bench_gpu $(ARGS)

bench-quality: venv
	$(BIN)/python -m benchmarks.bench_quality

# Regenerate the exact pins after changing dependencies in pyproject.toml.
lock:
	$(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(befa|imagebind-unofficial|pip)==' > requirements.lock

clean:
	rm -rf $(VENV) .befa
