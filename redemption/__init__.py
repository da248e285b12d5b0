"""Sluice redemption service: signed OpenAI-compatible calls paid in compute tokens."""
