"""Versions of the libraries a result was computed with."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("scvae", "torch", "pyro-ppl", "scanpy", "anndata", "numpy", "scikit-learn")


def versions() -> dict[str, str]:
    """Installed versions of the packages that determine scvae's results."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out
