# Every target installs what it needs from this repository's own files.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MXVENV ?= .venv-mxnet
, := ,
STAMP := $(VENV)/.installed

.PHONY: venv mxnet-venv prometheus chromium test test-fast lint demo compare compile print-image print-kfp-backend bench container-tools build-images image-test clean

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

# Headless Chromium (Debian's package) for the MLflow UI test (tests/tracking/test_demo_mlflow_ui.py).
chromium:
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: venv mxnet-venv prometheus chromium
	$(PY) -m pytest -q tests -m "not image"

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

# The KFP backend version the IR is for (gbcosface.pipeline_backends.SUPPORTED): the oldest supported by
# default, so that the default IR runs on every supported backend; KFP_BACKEND=2.17 for every feature.
KFP_BACKEND ?= 2.4

print-kfp-backend:
	@echo $(KFP_BACKEND)

# The KFP IR YAML of the DAG (pipelines/train_eval.py), for upload to a Kubeflow Pipelines UI.
compile: venv
	$(PY) -m gbcosface pipeline compile -o build/gbcosface_train_eval.yaml --image $(IMAGE) \
	  --kfp-backend $(KFP_BACKEND) $(foreach s,$(subst $(comma), ,$(IMAGE_PULL_SECRETS)),--image-pull-secret $(s))
comma := ,

# The whole pipeline on this machine: local S3 server, a real MLflow tracking server, synthetic faces,
# 2-replica emulated PyTorchJob on CPU, IJB-C-like evaluation, gate, publish; prints trained vs untrained
# TAR@FAR and the MLflow run's page (docs/tracking.md).
demo: venv
	$(PY) -m gbcosface demo --out demo-out

# The method comparison (pipelines/sweep.py) on the same world: gb_cosface vs cosface vs arcface,
# 3 seeds each at the demo's budget, one iteration at a time; prints the table (not part of `make test`).
compare: venv
	$(PY) -m gbcosface demo --sweep --out compare-out

# The container image (docs/containers.md): ONE image, $(IMAGE), for the KFP steps and the PyTorchJob
# pods. ENGINE=podman|docker; PUSH=1 pushes. Without BASE_IMAGE the base is built from Debian packages
# (images/base/debian-base.sh, no registry needed); BASE_IMAGE=...@sha256:... uses an upstream base.
# SITE_CA=file adds a CA for TLS-intercepting networks to the build and the image; HOST_PIP=1 (podman)
# lends the build this machine's pip index settings (a local mirror); BUILD_NETWORK=host where the
# build's network cannot reach the package index otherwise.
ENGINE ?= docker
PUSH ?= 0
BASE_IMAGE ?=
DEBIAN_BASE ?= localhost/gbcosface-base:bookworm
DEBIAN_MIRROR ?=
SITE_CA ?=
HOST_PIP ?= 0
BUILD_NETWORK ?=
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# podman on these machines needs runc with explicit ulimits (images/containers.conf); set
# PODMAN_CONF= to use the host's own containers.conf.
PODMAN_CONF ?= $(CURDIR)/images/containers.conf
ENGINE_ENV = $(if $(and $(filter podman,$(ENGINE)),$(PODMAN_CONF)),CONTAINERS_CONF=$(PODMAN_CONF))

# podman (with runc) and mmdebstrap from Debian, as `make prometheus` installs Prometheus.
container-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      podman runc mmdebstrap fuse-overlayfs slirp4netns uidmap >/dev/null; }

build-images: venv $(if $(filter podman,$(ENGINE)),container-tools)
	rm -f dist/gbcosface-*.whl
	# A wheel with fixed timestamps: unchanged sources give the same bytes, so the image's layers stay cached.
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 315532800) \
	  $(PY) -m pip wheel -q --no-deps --no-build-isolation --wheel-dir dist .
	$(PY) -m pip freeze --all --exclude-editable | grep -v -i -E '^(gbcosface|-e )' > dist/constraints.txt
	$(if $(BASE_IMAGE),,$(ENGINE_ENV) images/base/debian-base.sh $(ENGINE) $(DEBIAN_BASE) bookworm $(DEBIAN_MIRROR))
	$(ENGINE_ENV) $(ENGINE) build -f images/gbcosface/Dockerfile -t $(IMAGE) \
	  --build-arg BASE_IMAGE=$(or $(BASE_IMAGE),$(DEBIAN_BASE)) \
	  --build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) $(if $(filter podman,$(ENGINE)),--format docker) \
	  $(if $(SITE_CA),--secret id=site-ca$(,)src=$(SITE_CA)) \
	  $(if $(BUILD_NETWORK),--network $(BUILD_NETWORK)) \
	  $(if $(filter 1,$(HOST_PIP)),$$($(PYTHON) images/host_pip_flags.py dist/host-pip.conf)) .
	if [ "$(PUSH)" = 1 ]; then $(ENGINE_ENV) $(ENGINE) push $(IMAGE); fi

# The demo DAG with KFP's DockerRunner through podman's Docker API: every step in $(IMAGE) as its
# non-root user, the PyTorchJob's replicas as sibling containers (launcher local-containers), the
# published objects checked in S3; then the publish step's ONNX export inside the image.
image-test: ENGINE = podman
image-test: container-tools build-images
	$(ENGINE_ENV) GBCOSFACE_IMAGE=$(IMAGE) $(PY) -m pytest -q -m image tests/images

clean:
	rm -rf $(VENV) $(MXVENV) build dist .pytest_cache
