# The README's two commands: `make quickstart` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Shared 2-core machines: passive OpenMP waiting keeps timings 5-30x more stable (docs/benchmarks.md).
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1

.PHONY: setup quickstart test test-slow lint docs bench data clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[vlm,dev]'
	@$(MAKE) --no-print-directory data
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; without root or apt we say what to do instead.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else echo "NOTE: Fashion-MNIST missing. Run 'sudo apt-get install dataset-fashion-mnist' or set TRKIT_FASHION_MNIST=/path/to/idx/files"; fi

quickstart: $(STAMP)
	$(VENV)/bin/trkit-vlm quickstart

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# ruff (lint rules and formatting) on the whole tree, mypy on trkit/ (settings in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy trkit

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) site build *.egg-info
