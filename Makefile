# The two commands of the README:  make demo  and  make test.
# Both set up everything first: Debian packages (chromium, mesa-vulkan-drivers) where
# missing, then a virtual environment in .venv with the package and its test tools.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	./scripts/install-system-deps
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(PY) -m webnet_magic.demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/end_to_end.py

lint: setup
	$(VENV)/bin/ruff check webnet_magic tests benchmarks
	$(VENV)/bin/ruff format --check webnet_magic tests benchmarks

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
