"""Thin route modules: parse, call the domain code, shape the answer."""
