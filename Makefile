# Two commands on a fresh machine: `make demo` and `make test`. Each builds what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The CPU wheel of torch that these machines carry; a bare `torch` would pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# `make bench` runs every benchmark at reduced size (minutes); `make bench BENCH_ARGS=` runs the full sizes
# recorded in benchmarks/RESULTS.md (about two hours on 2 cores).
BENCH_ARGS ?= --quick

.PHONY: install build data demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q "pybind11>=2.12" "setuptools>=77" wheel
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(STAMP)

# Rebuild the C++ extension in place after editing csrc/.
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

data: $(STAMP)
	$(BIN)/igot data fetch

demo: data
	$(BIN)/igot demo

test: data
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: data
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) igot/*.so
