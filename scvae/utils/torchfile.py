"""Model and checkpoint files that run no code when opened: tensors plus JSON metadata.

A file written by :func:`save_tensor_file` is a ``torch.save`` of a dict holding only
tensors, numbers, strings and containers of them (what ``torch.load(weights_only=True)``
accepts) and the metadata as one JSON string. :func:`load_tensor_file` reads it with
``weights_only=True``, so a file whose pickle carries anything else (a class, a function
call: code that would run on load) is refused before any of it runs. Files of the old
format (a full pickle, scvae before format 2) are refused too, with a message that says
how to convert them explicitly (:func:`convert_legacy_file`, ``scvae convert-model``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scvae.errors import InputError
from scvae.utils.atomic import atomic_path

__all__ = [
    "FORMAT_VERSION",
    "UnsafeFileError",
    "convert_legacy_file",
    "load_tensor_file",
    "save_tensor_file",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version of the file layout (1: the old full pickle, never read by default)."""

FORMAT_KEY = "scvae_format"


class UnsafeFileError(InputError):
    """A file holds Python objects beyond tensors and was not loaded (no code ran)."""


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON")


def save_tensor_file(
    path: str | os.PathLike, kind: str, tensors: dict[str, Any], metadata: dict[str, Any]
) -> None:
    """Write tensors and JSON metadata atomically, in a file safe to open.

    Parameters
    ----------
    path
        Destination file.
    kind
        What the file is (``"model"``, ``"checkpoint"``); :func:`load_tensor_file` checks it.
    tensors
        Tensors, or containers (dict, list, tuple) of tensors, numbers and strings (an
        optimizer's ``state_dict``); tensors are moved to the CPU by the caller.
    metadata
        JSON-able values (numpy scalars and arrays are converted; NaN and infinities are
        kept, as Python's json module writes them).
    """
    payload = {
        FORMAT_KEY: kind,
        "format_version": FORMAT_VERSION,
        # One string: nothing in it can be a pickled object.
        "metadata": json.dumps(metadata, default=_json_default),
        "tensors": tensors,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # Through a Python file object: a full disk is then an OSError (named by
        # atomic_path), where torch.save(path) raises an opaque RuntimeError.
        torch.save(payload, handle)


def load_tensor_file(
    path: str | os.PathLike, kind: str, *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file of :func:`save_tensor_file` without running any code it may carry.

    Parameters
    ----------
    path
        The file.
    kind
        The kind it must be.
    map_location
        Where the tensors go.

    Returns
    -------
    tuple
        ``(metadata, tensors)``.

    Raises
    ------
    UnsafeFileError
        When the file's pickle holds anything but tensors and plain values (a file of
        the old format, or a crafted one): it is not loaded and none of its code runs.
    InputError
        When the file does not exist, is not a torch file, or is of another kind or an
        unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {kind} file does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err) and "Unsupported class" not in str(err):
            reason = _first_line(err)
            raise InputError(f"{path}: not a readable scvae {kind} file ({reason})") from err
        # torch's restricted unpickler stops at the first global it does not allow,
        # before calling anything: no code of the file has run.
        raise UnsafeFileError(
            f"{path}: refused to load: the file holds Python objects beyond tensors and "
            f"plain values, whose unpickling could run code ({_refusal(err)}). If it "
            "is a file of scvae before format 2 (a full pickle) and comes from a source "
            "you trust, convert it once with `scvae convert-model "
            f"{path} NEW.pt` (convert_legacy_file), or retrain the model; otherwise do "
            "not open it"
        ) from None
    except Exception as err:
        raise InputError(f"{path}: not a readable scvae {kind} file ({_first_line(err)})") from err
    if not isinstance(payload, dict) or FORMAT_KEY not in payload:
        raise UnsafeFileError(
            f"{path}: not a {kind} file of scvae format {FORMAT_VERSION} (no "
            f"{FORMAT_KEY!r} entry): a file of an older scvae; if it comes from a source "
            f"you trust, convert it with `scvae convert-model {path} NEW.pt`, or retrain"
        )
    if payload[FORMAT_KEY] != kind:
        raise InputError(f"{path}: a {payload[FORMAT_KEY]} file, not a {kind} file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: {kind} file format {payload.get('format_version')} is not "
            f"{FORMAT_VERSION}; a newer scvae wrote it: upgrade scvae"
        )
    try:
        metadata = json.loads(payload["metadata"])
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: the metadata of the {kind} file is not JSON ({err})") from err
    return metadata, payload["tensors"]


def convert_legacy_file(
    path: str | os.PathLike, out: str | os.PathLike, *, i_trust_this_file: bool = False
) -> dict[str, Any]:
    """Read an old-format (full pickle) model file and return its payload. Explicit only.

    Unpickling the old format can run any code the file carries: call this only on
    files you made yourself or got from a source you trust, and only once, to write them
    anew (:meth:`scvae.model.SCVAE.convert` does that).

    Parameters
    ----------
    path
        The old file.
    out
        The new file (named here so that the log says what is converted into what).
    i_trust_this_file
        Must be True: the caller's statement that the file is trusted.

    Returns
    -------
    dict
        The old payload.

    Raises
    ------
    InputError
        Without ``i_trust_this_file``, or when the file cannot be read.
    """
    path = Path(path)
    if not i_trust_this_file:
        raise InputError(
            f"{path}: converting an old-format file unpickles it, which runs any code it "
            "carries; pass i_trust_this_file=True (--i-trust-this-file) only for a file "
            "you trust"
        )
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    log.warning("unpickling %s (old format, trusted by the caller) to write %s", path, out)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise InputError(f"{path}: not a readable old-format scvae file ({err})") from err
    if not isinstance(payload, dict):
        raise InputError(f"{path}: not an old-format scvae file (a {type(payload).__name__})")
    return payload


def _refusal(err: BaseException) -> str:
    """What torch's restricted unpickler refused, without its advice to unpickle anyway."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if match:
        return f"it would call {match.group(1)}"
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
