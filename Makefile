# The two commands of the README:
#   make demo   start the embedded stack and walk the whole token lifecycle
#   make test   run every test (unit, contract, integration, property, fault)
# Both set up what they need first: a virtualenv in .venv and node_modules.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint compile clean

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Sluice needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || (echo "Sluice needs Node.js 20 or newer" && exit 1)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

demo: setup
	$(BIN)/sluice demo

test: setup
	./scripts/run-tests.sh

lint: setup
	$(BIN)/ruff check ledger redemption inference_node scripts tests
	$(BIN)/mypy

compile: setup
	$(BIN)/python scripts/compile_contracts.py

clean:
	rm -rf $(VENV) node_modules .sluice
