# lenet — the README's commands. Every target sets up .venv by itself.
#   make setup   create .venv and install lenet with its dev, serve and export extras
#   make demo    fetch MNIST, show a sample, train the quick recipe, evaluate, write pictures to runs/demo/
#   make test    the whole test suite, slow tests (real datasets, browser) included
#   make bench   training/inference throughput, preprocessing speed, realistic-digit accuracy
#   make serve   the drawing page on http://127.0.0.1:8000
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine keeps these wheels on disk; elsewhere pip fetches your platform's build.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast bench serve clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,serve,export]'
	touch $@

demo: setup
	$(VENV)/bin/lenet data fetch
	$(VENV)/bin/lenet data show --index 0
	$(VENV)/bin/lenet train --preset quick --out runs/demo --overwrite
	$(VENV)/bin/lenet eval --checkpoint runs/demo/model.safetensors --out runs/demo
	@echo "demo outputs: runs/demo/curves.png runs/demo/confusion.png runs/demo/mistakes.png runs/demo/predictions.png"

test: setup
	LENET_OFFLINE=1 $(PY) -m pytest -q  # tests never try the network

test-fast: setup
	LENET_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/fast_paths.py
	$(PY) benchmarks/preprocess_speed.py
	$(PY) benchmarks/realistic_digits.py

serve: setup
	$(VENV)/bin/lenet serve

clean:
	rm -rf runs build src/*.egg-info .pytest_cache
