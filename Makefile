# Every target installs what it needs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MXVENV ?= .venv-mxnet
STAMP := $(VENV)/.installed

.PHONY: venv mxnet-venv prometheus test test-fast lint demo compile print-image bench build-images clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# mxnet 1.9.1 imports only beside numpy<1.24, so it lives in its own small venv,
# used only by the RecordIO interoperability tests.
mxnet-venv: $(MXVENV)/.installed

$(MXVENV)/.installed:
	test -x $(MXVENV)/bin/python || $(PYTHON) -m venv $(MXVENV)
	$(MXVENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy==1.23.5" "opencv-python-headless<4.12"
	touch $@

# A real Prometheus server (Debian's package) and promtool for the monitoring tests.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

test: venv mxnet-venv prometheus
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q tests -m "not integration and not e2e"

lint: venv
	$(VENV)/bin/ruff check src tests bench components pipelines

# The one image the steps and the training pods run: what `make build-images` builds is what
# `make compile` references (gbcosface.images; a test checks these defaults against it).
REGISTRY ?= ghcr.io/gbcosface
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := $(REGISTRY)/gbcosface:$(TAG)
# Secrets the steps' pods pull the image with (comma-separated), e.g. IMAGE_PULL_SECRETS=regcred.
IMAGE_PULL_SECRETS ?=

print-image:
	@echo $(IMAGE)

# The KFP IR YAML of the DAG (pipelines/train_eval.py), for upload to a Kubeflow Pipelines UI.
compile: venv
	$(PY) -m gbcosface pipeline compile -o build/gbcosface_train_eval.yaml --image $(IMAGE) \
	  $(foreach s,$(subst $(comma), ,$(IMAGE_PULL_SECRETS)),--image-pull-secret $(s))
comma := ,

# The whole pipeline on this machine: local S3 server, synthetic faces, 2-replica emulated
# PyTorchJob on CPU, IJB-C-like evaluation, gate, publish; prints trained vs untrained TAR@FAR.
demo: venv
	$(PY) -m gbcosface demo --out demo-out

# Container images (docs/kubernetes.md): the wheel into dist/, then the trainer image (CUDA + torch,
# what PyTorchJob pods run) and the pipeline image (KFP steps). ENGINE=docker|podman; PUSH=1 pushes;
# TRAINER_BASE / PIPELINE_BASE / TORCH_INDEX_URL override the Dockerfiles' pinned defaults.
ENGINE ?= docker
PUSH ?= 0
TRAINER_BASE ?=
PIPELINE_BASE ?=
TORCH_INDEX_URL ?=
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

build-images: venv
	rm -f dist/gbcosface-*.whl
	$(PY) -m pip wheel -q --no-deps --no-build-isolation --wheel-dir dist .
	$(ENGINE) build -f images/trainer/Dockerfile -t $(REGISTRY)/gbcosface-trainer:$(TAG) \
	  --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) \
	  $(if $(TRAINER_BASE),--build-arg BASE_IMAGE=$(TRAINER_BASE)) .
	$(ENGINE) build -f images/pipeline/Dockerfile -t $(REGISTRY)/gbcosface-pipeline:$(TAG) \
	  --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) \
	  $(if $(PIPELINE_BASE),--build-arg BASE_IMAGE=$(PIPELINE_BASE)) \
	  $(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) .
	if [ "$(PUSH)" = 1 ]; then \
	  $(ENGINE) push $(REGISTRY)/gbcosface-trainer:$(TAG) && $(ENGINE) push $(REGISTRY)/gbcosface-pipeline:$(TAG); \
	fi

clean:
	rm -rf $(VENV) $(MXVENV) build dist .pytest_cache
