"""Connectors: one module per provider (see docs/connectors.md)."""
