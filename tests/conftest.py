"""The suite's fixtures live in `tests/support/`; this file only registers them.

pytest-xdist workers inherit COLUMNS=80 and LINES=24 from their controller; with both set, the CLI's
rich console fixes its size when `ledger.cli.output` is imported, and a test's own COLUMNS (CliRunner
env) would no longer apply. Dropped before any plugin imports the CLI, so a worker sizes its console
like a serial run does.
"""

import os

for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

pytest_plugins = [
    "tests.support.services",
    "tests.support.ledger",
    "tests.support.stack",
    "tests.support.audit",
    "tests.support.cli",
    "tests.support.vllm",
]
