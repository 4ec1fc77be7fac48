"""Strict JSON files for results: NaN and infinities are written as null, read back as NaN.

anndata's ``uns`` cannot hold ``None`` and strict JSON has no NaN, so result files go
through this one round trip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = ["jsonable", "null_to_nan", "read_json", "write_json"]


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def null_to_nan(obj: Any) -> Any:
    """Undo :func:`jsonable` for storage in uns, which cannot hold None."""
    if isinstance(obj, dict):
        return {k: null_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [null_to_nan(v) for v in obj]
    return math.nan if obj is None else obj


def write_json(obj: Mapping, path: str | os.PathLike) -> None:
    """Write ``obj`` as strict JSON (NaN -> null) atomically.

    Parameters
    ----------
    obj
        Mapping of JSON-able values, numpy types included.
    path
        Destination file.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON file written by :func:`write_json`; null becomes NaN everywhere.

    Parameters
    ----------
    path
        The JSON file.

    Returns
    -------
    dict
        The content, with ``None`` replaced by ``nan`` (so it can go into ``uns``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found")
    try:
        return null_to_nan(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from err
