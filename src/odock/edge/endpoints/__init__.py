"""Endpoints, one module per route family."""
