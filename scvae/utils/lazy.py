"""Lazy package attributes: ``import scvae`` stays light until a name is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str, names: Mapping[str, str], moved: Mapping[str, str] | None = None
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
        Public name -> module (absolute) that defines it; a submodule of the package
        maps to itself (``"pp": "scvae.pp"``).
    moved
        Former public name -> where it went: using it raises an AttributeError that
        says so, for scripts written against an older release.

    Returns
    -------
    tuple
        ``(__getattr__, __dir__, __all__)`` to assign at the package's top level.
    """
    public = sorted(names)
    moved = dict(moved or {})

    def __getattr__(name: str) -> object:
        if name in names:
            module = importlib.import_module(names[name])
            # A submodule listed under its own name (``"pp": "scvae.pp"``) is the attribute.
            return module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        if name in moved:
            raise AttributeError(f"{package}.{name} is gone: {moved[name]}")
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
