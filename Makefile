# Developer entry points. `make help` lists them; the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed, found " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,pretrained]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install the project with its dev and pretrained extras (reused when up to date).

.PHONY: lint
lint: install lint-docker lint-helm ## ruff and mypy on the code; the Dockerfiles and the Helm chart (lint-docker, lint-helm).
	$(BIN)/ruff check service model tests bench
	$(BIN)/ruff format --check service model tests bench
	$(BIN)/mypy

# The offline Helm renderer the chart checks use: Helm's own engine (helm.sh/helm/v3), built once
# into .tools/ (about 1.5-3 min on 2 cores the first time, seconds with Go's build cache).
TOOLS := .tools
HELM_RENDER := $(TOOLS)/helm-render
HELM_RENDER_SRC := $(wildcard tests/deploy/helmrender/*.go) tests/deploy/helmrender/go.mod tests/deploy/helmrender/go.sum

$(HELM_RENDER): $(HELM_RENDER_SRC)
	@command -v go >/dev/null || { echo "Go >= 1.26 is needed to build $@ (docs/operations.md)"; exit 1; }
	cd tests/deploy/helmrender && GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0 \
	  go build -trimpath -ldflags='-s -w' -o $(CURDIR)/$@ .

.PHONY: helm-render
helm-render: $(HELM_RENDER) ## Build .tools/helm-render, the offline Helm renderer of the chart checks.

.PHONY: lint-docker
lint-docker: install ## hadolint on deploy/docker/Dockerfile and Dockerfile.gpu.
	$(BIN)/hadolint deploy/docker/Dockerfile deploy/docker/Dockerfile.gpu

.PHONY: lint-helm
lint-helm: install $(HELM_RENDER) ## Render the Helm chart's profiles and check them against the vendored schemas.
	$(BIN)/python -m tests.deploy.chart

.PHONY: test
test: lint ## Install, start local Kafka and Redis, run every test, stop what was started.
	deploy/local/with-services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

.PHONY: services-up
services-up: ## Start the local Kafka broker and Redis and leave them running.
	deploy/local/kafka.sh start
	deploy/local/redis.sh start

.PHONY: services-down
services-down: ## Stop the local Kafka broker and Redis.
	deploy/local/kafka.sh stop
	deploy/local/redis.sh stop

.PHONY: demo
demo: install ## The whole path end to end, nothing started: real photos, pretrained model, mock broker.
	$(BIN)/enrich demo

.PHONY: demo-text
demo-text: install ## Retrain the demo's text model (service/demo_assets/text/) on the shared fashion titles (about 1 min).
	$(BIN)/enrich train --text --text-features 4096 --labels $(SHARED_DATA)/fashion-products/labels.csv \
	  --taxonomy $(SHARED_DATA)/google-product-taxonomy/taxonomy-with-ids.en-US.txt --holdout 0.1 \
	  --name demo-text-4096 --output .run/demo-text --verbose 0
	rm -rf service/demo_assets/text && cp -r .run/demo-text/model service/demo_assets/text

.PHONY: clean
clean: ## Remove the virtual environment and run files.
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache $(TOOLS)

.PHONY: quality
quality: install ## The quality grid of docs/results/ (frozen Lite0/1/2 x 3 heads x 3 seeds, tuned Lite0 x 2 heads x 1 seed, tuned Lite1 x 2 heads x 3 seeds; depth 4 and 5; Lite1 with its top 5 blocks tuned: 3 epochs, 10 epochs, 4 views, then 10 epochs on augmented images, marginal; about 4.5 h on 2 cores).
	$(BIN)/python -m bench.quality --fresh --variants lite0-frozen
	$(BIN)/python -m bench.quality --variants lite1-frozen
	$(BIN)/python -m bench.quality --variants lite2-frozen
	$(BIN)/python -m bench.quality --variants lite0-tuned --heads marginal leaf --seeds 1
	$(BIN)/python -m bench.quality --variants lite1-tuned --heads marginal leaf --seeds 3
	$(BIN)/python -m bench.quality --variants lite1-tuned5 --heads marginal --seeds 1 --depths 4
	$(BIN)/python -m bench.quality --variants lite1-tuned5-long --heads marginal --seeds 1 --depths 4 5
	$(BIN)/python -m bench.quality --variants lite1-tuned5-zoom --heads marginal --seeds 1 --depths 4
	$(BIN)/python -m bench.quality --variants lite1-tuned5-aug10 --heads marginal --seeds 1 --depths 4
	$(BIN)/python -m bench.quality --variants lite1-tuned5-aug10 --heads marginal --seeds 2 --depths 5

.PHONY: quality-quick
quality-quick: install ## The grid's quick variant, Lite0 frozen only (under 15 min once features are cached): docs/results/.
	$(BIN)/python -m bench.quality --quick

SHARED_DATA ?= ../shared/data
.PHONY: demo-heads
demo-heads: install ## Retrain the demo's heads bundle (service/demo_assets/heads/) on both shared sources (about 3 min, 30 s with a warm feature cache).
	$(BIN)/enrich train --labels $(SHARED_DATA)/product-images/labels.csv --images $(SHARED_DATA)/product-images \
	  --labels $(SHARED_DATA)/fashion-products/labels.csv --images $(SHARED_DATA)/fashion-products \
	  --business-values $(SHARED_DATA)/product-images/business-value.csv \
	  --business-values $(SHARED_DATA)/fashion-products/business-value.csv \
	  --taxonomy $(SHARED_DATA)/google-product-taxonomy/taxonomy-with-ids.en-US.txt \
	  --backbone efficientnet_lite0 --weights imagenet-lite --heads marginal --holdout 0.1 \
	  --batch-size 64 --learning-rate 1e-3 --epochs 40 --name demo-lite0-marginal \
	  --cache-dir .run/quality/cache --output .run/demo-heads --verbose 0
	rm -rf service/demo_assets/heads && cp -r .run/demo-heads/heads service/demo_assets/heads

.PHONY: quality-scratch
quality-scratch: install ## The from-scratch baseline (MobileNetV3-Small, no pretrained weights, about an hour): docs/results/scratch/.
	bench/quality_run.sh docs/results/scratch

.PHONY: bench
bench: install ## Service benchmarks on real Kafka + Redis (about 35 min): docs/performance.md, docs/results/frontier/.
	deploy/local/with-services.sh $(BIN)/python -m bench.service_bench $(BENCH_ARGS)
	deploy/local/with-services.sh $(BIN)/python -m bench.hol_latency
	$(BIN)/python -m bench.dataset_bench
	deploy/local/with-services.sh $(BIN)/python -m bench.frontier

.PHONY: frontier
frontier: install ## Accuracy against end-to-end products/s for Lite0 128/160/224 and Lite1 240 under Keras, LiteRT float and int8 (about 13 min with the models cached, two warm runs a point; about 26 cold): docs/results/frontier/.
	deploy/local/with-services.sh $(BIN)/python -m bench.frontier $(BENCH_ARGS)

.PHONY: gpu-prepare
gpu-prepare: install ## What the device machine's one run (bench/gpu_run.sh) carries: wheels of Keras and the pure packages it lacks in .whl/, the demo's Lite0 model (or GPU_MODEL=DIR) in .device-model/.
	rm -rf .whl .device-model && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('keras', 'namex', 'optree', 'structlog')))")
	$(if $(GPU_MODEL),cp -r $(GPU_MODEL) .device-model,$(BIN)/python -c "from pathlib import Path; from model.bundle import materialise; materialise(Path('service/demo_assets/heads'), Path('.device-model'))")
	@echo "then: run(command='bash bench/gpu_run.sh', carry=['.whl', '.device-model'], timeout_s=480)"

.PHONY: bench-quick
bench-quick: install ## The same figures on smaller inputs (under 5 min): bench/results/ only.
	deploy/local/with-services.sh $(BIN)/python -m bench.service_bench --quick $(BENCH_ARGS)
	$(BIN)/python -m bench.dataset_bench --quick

CHAOS_ARGS ?=
.PHONY: chaos
chaos: install ## Every fault scenario, fuzzing and the soak, long versions, one table: docs/reliability.md (about 35 min).
	$(BIN)/python -m pip install -q -e '.[dev,fuzz]'
	deploy/local/with-services.sh $(BIN)/python bench/chaos.py $(CHAOS_ARGS)

FUZZ_SECONDS ?= 300
.PHONY: fuzz
fuzz: install ## atheris on the image and record decoders, FUZZ_SECONDS (300) each: .run/fuzz/.
	$(BIN)/python -m pip install -q -e '.[dev,fuzz]'
	$(BIN)/python -m bench.fuzz --target all --seconds $(FUZZ_SECONDS)

SOAK_ARGS ?=
.PHONY: soak
soak: install ## The service for 10 min at half its measured capacity: memory, fds, connections.
	deploy/local/with-services.sh $(BIN)/python -m bench.soak $(SOAK_ARGS)
