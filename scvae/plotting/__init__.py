"""Figures of the QC, diagnostics and comparison stages, with one shared style."""
