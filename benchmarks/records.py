"""Benchmark records shared by bench_quality.py and bench_integration.py.

One JSON line per run, keyed by the hash of the method's settings, so that a rerun skips
what is there and a renamed method keeps its runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd


def method_hash(method: dict) -> str:
    """Short hash of a method's definition: records of other settings are not reused.

    VAE settings enter with the keys that differ from the package defaults only, so that
    a new setting (added with a default that keeps the old behaviour) keeps the records.
    """
    from scvae.training.settings import default_settings

    if method["kind"] == "vae":
        defaults = default_settings()
        changed = {k: v for k, v in method["settings"].items() if defaults.get(k) != v}
        method = {**method, "settings": changed}
    return hashlib.sha256(json.dumps(method, sort_keys=True).encode()).hexdigest()[:12]


def read_records(path: Path) -> list[dict]:
    """Every record written so far to ``path``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def current_records(methods: dict[str, dict], path: Path) -> pd.DataFrame:
    """Records of the methods as they are defined now, under their current names.

    A record belongs to the method whose settings hash it carries, whatever the name it
    was run under (a candidate that became ``recommended`` keeps its runs); records of
    settings no method has now are left out.
    """
    names: dict[str, str] = {}
    for name, method in methods.items():
        h = method_hash(method)
        if h in names:
            sys.exit(f"methods {names[h]!r} and {name!r} have the same settings")
        names[h] = name
    return pd.DataFrame(
        [
            {**r, "method": names[r["method_hash"]]}
            for r in read_records(path)
            if r["method_hash"] in names
        ]
    )
