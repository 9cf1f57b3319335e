# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel: an unpinned torch would pull several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench clean

$(BIN)/vpp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/vpp

install: $(BIN)/vpp

demo: install
	$(BIN)/vpp bench --preset compact --size 288x512 --frames 4 --keep-ratio 0.45

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/vpp bench --preset tiny --size 544x960 --keep-ratio 0.45 --frames 8

clean:
	rm -rf $(VENV) build *.egg-info
