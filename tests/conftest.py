"""The suite's fixtures live in `tests/support/`; this file only registers them."""

pytest_plugins = [
    "tests.support.services",
    "tests.support.ledger",
    "tests.support.stack",
    "tests.support.audit",
    "tests.support.cli",
    "tests.support.vllm",
]
