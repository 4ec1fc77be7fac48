"""Shared helpers: atomic writes, strict JSON, provenance, lazy attributes."""
