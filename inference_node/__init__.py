"""Sluice inference node: the agent in front of a vLLM server, and a vLLM-API simulator."""
