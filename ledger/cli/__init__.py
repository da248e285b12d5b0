"""The `sluice` command line: one command that fronts the whole system."""
