"""Benchmarks behind `sluice bench`: each prints figures and returns them as JSON-able dicts."""
