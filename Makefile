# The two commands of the README:
#   make demo   start the embedded stack and walk the whole token lifecycle
#   make test   run every test (unit, contract, integration, property, fault)
#   make test-fast  the same without the slow tests, in parallel (pytest-xdist)
#   make test-blocks  the CLI, settlement and end-to-end suites on a chain with 1 s blocks
# Both set up what they need first: a virtualenv in .venv and node_modules.
#   make test-vllm  the real-vLLM tier (pytest -m vllm): installs a CPU vLLM into its own cached
#                   virtualenv first (scripts/vllm/setup.sh), then runs the agent and the whole story on it

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-fast test-blocks test-vllm vllm-setup lint compile clean

setup: $(VENV)/.installed node_modules/.installed portal/dist/index.html

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Sluice needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || (echo "Sluice needs Node.js 20 or newer" && exit 1)
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The JavaScript client and the web portal (served by the service at /portal/): installed from their lock
# files, then built into clients/js/dist and portal/dist; rebuilt when a source file changes.
PORTAL_SOURCES := $(shell find portal/src clients/js/src -type f 2>/dev/null) portal/index.html portal/vite.config.ts

portal/node_modules/.installed: portal/package.json portal/package-lock.json clients/js/package.json clients/js/package-lock.json
	npm ci --prefix clients/js --no-audit --no-fund --loglevel=error
	npm ci --prefix portal --no-audit --no-fund --loglevel=error
	@touch $@

portal/dist/index.html: portal/node_modules/.installed $(PORTAL_SOURCES)
	npm --prefix portal run build --silent
	@touch $@

demo: setup
	$(BIN)/sluice demo

test: setup
	./scripts/run-tests.sh

# The edit-test loop: everything but the slow (fault, property, recompile) tests, on two xdist workers,
# each with its own Anvil, PostgreSQL and Redis on free ports under its own basetemp subdirectory.
test-fast: setup
	./scripts/run-tests.sh -m 'not slow and not vllm' -n 2 --dist loadfile $(PYTEST_ARGS)

# The suites where block cadence matters (CLI writes waiting for receipts and confirmations, settlement
# batches, the end-to-end journeys and paid calls) again on a chain that makes a block every second, as a
# QBFT chain does (Anvil's interval mining): waits and races that instant mining hides.
BLOCK_SUITES := tests/ledger/cli tests/ledger/settlement tests/test_readme_journeys.py tests/redemption/test_admitted_is_paid.py
test-blocks: setup
	SLUICE_BLOCK_TIME=1 ./scripts/run-tests.sh -m 'not slow and not vllm' -n 2 --dist loadfile $(BLOCK_SUITES) $(PYTEST_ARGS)

# vLLM's own virtualenv and the tiny model, under ~/.cache/sluice (SLUICE_VLLM_HOME); a no-op once done.
vllm-setup:
	./scripts/vllm/setup.sh

# One vLLM server for the whole tier (pinned to one core); pytest directly, so that a tier that selected
# no test fails (exit 5) instead of passing.
test-vllm: setup vllm-setup
	$(BIN)/python -m pytest -m vllm $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check ledger redemption inference_node scripts tests
	$(BIN)/mypy
	$(BIN)/lint-imports

compile: setup
	$(BIN)/python scripts/compile_contracts.py

clean:
	rm -rf $(VENV) node_modules .sluice portal/node_modules portal/dist clients/js/node_modules clients/js/dist
