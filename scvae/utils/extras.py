"""Optional dependencies: which extra of pyproject.toml installs each, imported on use.

The core package (``pip install scvae``) holds what the model needs. The workflow
(Snakemake), the SLURM executor, the scIB integration metrics and the Harmony and scVI
baselines come with extras, so that a library user does not install a workflow engine
and JAX. The modules that need one import it through :func:`import_optional`, which
names the extra to install when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from scvae.errors import MissingExtraError

__all__ = ["OPTIONAL_MODULES", "import_optional", "install_hint"]

#: Optional module -> (its distribution on PyPI, the extra of scvae that installs it).
#: tests/test_extras.py checks that pyproject.toml's extras declare these.
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "scib_metrics": ("scib-metrics", "integration"),
    "harmonypy": ("harmonypy", "integration"),
    "scvi": ("scvi-tools", "scvi"),
}


def install_hint(module: str) -> str:
    """The pip command that installs an optional module, e.g. ``pip install 'scvae[scvi]'``.

    Parameters
    ----------
    module
        A key of :data:`OPTIONAL_MODULES`.

    Returns
    -------
    str
        The command.
    """
    _, extra = OPTIONAL_MODULES[module]
    return f"pip install 'scvae[{extra}]'"


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with the extra that installs it.

    Parameters
    ----------
    module
        A key of :data:`OPTIONAL_MODULES` (the top-level module name).
    purpose
        What needs it, e.g. ``"the scIB metrics"``.

    Returns
    -------
    types.ModuleType
        The module.

    Raises
    ------
    MissingExtraError
        An ImportError, when the module cannot be imported; the message names the distribution, the
        extra and the original error (a broken install of one of its own dependencies
        also lands here, and reinstalling the extra is the fix for both).
    """
    distribution, _ = OPTIONAL_MODULES[module]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{distribution} is needed for {purpose} but cannot be imported here ({err}): "
            f"{install_hint(module)}",
            name=module,
        ) from err
