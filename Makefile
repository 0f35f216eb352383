# Two commands on a fresh machine:  make demo  |  make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.clpoison-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-open-clip bench clean

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

# The consumer tests that need open_clip, in a separate venv: open_clip imports torchvision, which needs the
# torch 2.14.1 + torchvision 0.29.1 pair (a CUDA build, ~5.5 GB; it runs on the CPU) instead of .venv's torch.
OC_VENV ?= .venv-open-clip
test-open-clip:
	@[ -x $(OC_VENV)/bin/python ] || $(PY) -m venv $(OC_VENV)
	@$(OC_VENV)/bin/python -c "import open_clip_train" >/dev/null 2>&1 || $(OC_VENV)/bin/python -m pip install -q \
	  torch==2.14.1 torchvision==0.29.1 "open_clip_torch[training]==3.3.0" pandas
	@$(OC_VENV)/bin/python -m pip install -q -e ".[test]"
	$(OC_VENV)/bin/python -m pytest tests/test_openclip_adapter.py tests/test_export_formats.py -rs

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --out runs/bench/throughput.json
	$(BIN)/python benchmarks/ssl_small.py --out runs/bench/ssl_small.json --seeds 3

clean:
	rm -rf runs .pytest_cache
