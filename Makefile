# LinkedOut developer targets. `make install` builds .venv; everything else uses it.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default; e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: install test lint demo benchmark clean

install: $(VENV)/.installed

# torch goes in first and is then pinned by a constraints file, so no later dependency can
# swap the CPU build for a multi-GB CUDA one.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -c 'import torch; print(f"torch=={torch.__version__}")' > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	touch $@

test: install
	$(PY) -m pytest -q

lint: install
	$(BIN)/ruff check linkedout tests benchmarks examples
	$(BIN)/ruff format --check linkedout tests benchmarks examples

demo: install
	$(PY) examples/demo.py

benchmark: install
	$(PY) benchmarks/storage.py
	$(PY) benchmarks/extract.py
	$(PY) benchmarks/recommend.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
