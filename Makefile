# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bridge.demo

lint: $(STAMP)
	$(BIN)/ruff check bridge drivers sim hil tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m bench

fuzz: $(STAMP)
	HWBRIDGE_FUZZ=long $(BIN)/python -m pytest -q -p no:cacheprovider tests -k "fuzz or hypothesis"

clean:
	rm -rf $(VENV) build *.egg-info
