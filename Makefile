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

examples/clip.mp4: examples/make_clip.py | $(BIN)/vpp
	$(BIN)/python examples/make_clip.py $@ --frames 48 --size 360x640 --fps 24

# Random weights until the bundled model ships: the whole pipeline runs, the masks mean nothing.
demo: install examples/clip.mp4
	$(BIN)/vpp segment examples/clip.mp4 --preset compact --keep-ratio 0.45 --size 384 -f overlay,ytvis -o runs/demo --exist-ok

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/vpp bench --preset tiny --size 544x960 --keep-ratio 0.45 --frames 8

clean:
	rm -rf $(VENV) build *.egg-info runs examples/clip.mp4
