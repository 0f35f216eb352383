# Two commands on a fresh machine:  make demo  |  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clpoison-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c "import torch" >/dev/null 2>&1; then \
	    echo "reusing the torch already installed for $(PY)"; $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; \
	fi
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	@$(BIN)/python -c "import torch" >/dev/null 2>&1 || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" || $(BIN)/python -m pip install -q torch
	@$(BIN)/python -m pip install -q -e ".[test]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/clpoison demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest tests --doctest-modules src/clpoison

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --out runs/bench/throughput.json
	$(BIN)/python benchmarks/ssl_small.py --out runs/bench/ssl_small.json --seeds 3

clean:
	rm -rf runs .pytest_cache
