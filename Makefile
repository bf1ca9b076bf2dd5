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

.PHONY: help venv chromium demo test test-fast lint format bench bench-store bench-ingest bench-extract bench-train bench-recommend bench-quality bench-study bench-study-full bench-lattice-mgcn bench-scale bench-batch-rule bench-sparse-defaults bench-cold-start bench-new-item bench-vs-reference bench-profile-epoch bench-gpu fault-injection-root lock clean

help:  ## list the targets with what each does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP)  ## set up .venv from requirements.lock (a no-op when it is up to date)

$(STAMP): requirements.lock pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	@# ImageBind's package declares audio/video deps that do not resolve beside torch 2.14; its model code needs none of them.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps imagebind-unofficial==0.1.1
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: venv  ## the main job on the default catalog (movielens-100k-posters), about 6 minutes on 2 cores
	$(BIN)/python -m flows.demo

# The study report test renders HTML in Debian's headless Chromium.
chromium:  ## install Debian's headless chromium when missing (the HTML report test)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: venv chromium  ## the whole test suite (what CI runs, after lint)
	$(BIN)/python -m pytest -q

# No Prefect server, no Ray, nothing measured above ~10 s: the inner loop (under about 2 minutes).
test-fast: venv  ## the quick tests: no Prefect server, no Ray, no slow end-to-end runs
	$(BIN)/python -m pytest -q -m "not slow and not prefect and not ray"

lint: venv  ## ruff: formatting checked and lint rules (line length 120), as CI runs them
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: venv  ## ruff: reformat and apply the safe lint fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-store bench-ingest bench-extract bench-train bench-recommend  ## every quick benchmark (store, ingest, extract, train, recommend)

bench-store: venv  ## feature-store throughput: write, read, a 1% upsert vs a full rewrite
	$(BIN)/python -m benchmarks.bench_store

bench-ingest: venv  ## ingest speed
	$(BIN)/python -m benchmarks.bench_ingest

bench-extract: venv  ## extraction per encoder: forward, end to end and FLOP limit, before/after; ARGS=--encoders minilm
	$(BIN)/python -m benchmarks.bench_extract $(ARGS)

bench-train: venv  ## epoch time per model, base and +BeFA (paired ratio)
	$(BIN)/python -m benchmarks.bench_train

# users/s and memory of `befa recommend`'s scoring at amazon-baby size and 10x its users (speed only)
bench-recommend: venv  ## users/s and memory of `befa recommend`'s scoring at amazon-baby size and 10x its users
	$(BIN)/python -m benchmarks.bench_recommend

bench-study: venv  ## the BeFA study on movielens-100k-posters at a small budget, on CPU
	$(BIN)/python -m benchmarks.bench_study

# The study at the full protocol (1000 epochs, patience 10, 3 seeds, EfficientNet-Lite2 + MiniLM,
# cold items and 25% sparsity); hours. Resumable: run it again to continue where it stopped.
bench-study-full: venv  ## the study at the full protocol (hours; resumable)
	$(BIN)/python -m benchmarks.bench_study_full

bench-lattice-mgcn: venv  ## epoch time of LATTICE and MGCN (base and +BeFA) at amazon-baby sizes
	$(BIN)/python -m benchmarks.bench_lattice_mgcn --threads 2

# befa and the reference toolbox (MMRec) run live side by side, load-matched, on movielens (docs/benchmarks.md); ARGS="--models bm3 --epochs 12 --features random --json out.json"
bench-vs-reference: venv  ## befa vs the reference toolbox (MMRec), run live side by side
	$(BIN)/python -m benchmarks.bench_vs_reference $(ARGS)

# per-op profile of one training epoch per model, and its FLOP floor at this machine's matmul rate (docs/benchmarks.md)
bench-profile-epoch: venv  ## where each model's training epoch goes (per-op profile) against its FLOP floor; ARGS=--models mgcn
	$(BIN)/python -m benchmarks.profile_epoch $(ARGS)

# growth with catalog size (1x, 4x, 16x amazon-baby; speed only); ARGS=--knn: approximate vs exact kNN graph
bench-scale: venv  ## growth with catalog size (1x, 4x, 16x amazon-baby); ARGS=--knn for the approximate kNN
	$(BIN)/python -m benchmarks.bench_scale $(ARGS)

# the opt-in large-catalog batching rule on real interactions: quality and time to the best epoch against the protocol
bench-batch-rule: venv  ## the opt-in large-catalog batching rule: quality and time to the best epoch
	$(BIN)/python -m benchmarks.bench_batch_rule $(ARGS)

# the GPU check, ~8 min on one CUDA GPU; refuses (exit 2) without one; ARGS=--quick for a short run
bench-gpu: venv  ## the GPU check (~8 min on one CUDA GPU; exit 2 without one)
	$(BIN)/python -m benchmarks.bench_gpu $(ARGS)

bench-quality: venv  ## recommendation quality, base vs +BeFA, on movielens-100k-posters (to early stop)
	$(BIN)/python -m benchmarks.bench_quality

# each default model vs MostPop on TikTok and a 0.2%-dense movielens subset, at defaults and after befa run's fit
bench-sparse-defaults: venv  ## sparse catalogs: every default model vs MostPop, at defaults and after the fit
	$(BIN)/python -m benchmarks.bench_sparse_defaults $(ARGS)

# new items: the three settings, ItemKNN-CBF, the mappers and id_dropout on a cold-items split (ARGS="--catalog tiktok")
bench-cold-start: venv  ## cold start: floors, every content model base/+BeFA/id_dropout with mappers, 3 seeds (hours)
	$(BIN)/python -m benchmarks.bench_cold_start --threads 1 $(ARGS)

# new items: the time from `befa ingest` of the catalog with one film added to the film in `befa recommend` (movielens)
bench-new-item: venv  ## a film added to movielens: seconds from `befa ingest` to it in `befa recommend`; ARGS="--item 50"
	$(BIN)/python -m benchmarks.bench_new_item --threads 1 $(ARGS)

# a real full disk: befa on a small tmpfs filled to the last byte at each stage's write point; needs root to mount
# (exit 2 otherwise); CI runs tests/job/test_fault_injection.py, which raises ENOSPC in-process instead
fault-injection-root: venv  ## a real full disk at the write points: befa on a filled tmpfs (root only; ~3 min)
	$(BIN)/python -m benchmarks.fault_injection_root $(ARGS)

# Regenerate the exact pins after changing dependencies in pyproject.toml.
lock:  ## regenerate the exact pins after changing dependencies in pyproject.toml
	$(BIN)/pip freeze --all --exclude-editable | grep -v -E '^(befa|imagebind-unofficial|pip)==' > requirements.lock

clean:  ## remove .venv and .befa
	rm -rf $(VENV) .befa
