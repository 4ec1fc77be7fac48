"""Lazy package attributes: ``import scvae`` stays light until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` of a package whose names load on use.

    A package re-exports its public names without importing the modules that define
    them (and the torch, pyro or scanpy those import) until a name is first used, as
    scvi-tools' subpackages do.

    Parameters
    ----------
    package
        The package's ``__name__``.
    names
        Public name -> module (absolute) that defines it.

    Returns
    -------
    tuple
        ``(__getattr__, __dir__, __all__)`` to assign at the package's top level.
    """
    public = sorted(names)

    def __getattr__(name: str) -> object:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        try:
            # Subpackages and modules of the package, e.g. ``scvae.data`` after ``import scvae``.
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":
                raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
