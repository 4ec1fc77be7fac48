"""Parameter defaults read from the source agree with Python's own signatures."""

from __future__ import annotations

import importlib
import inspect

import pytest

from scvae.utils import signature
from scvae.utils.signature import source_defaults


def _python_defaults(module: str, function: str) -> dict:
    params = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    return {name: p.default for name, p in params.items() if p.default is not p.empty}


@pytest.mark.parametrize(
    ("module", "function"),
    [
        # The functions the workflow config's defaults come from (scvae.config.DEFAULTS_FROM).
        ("scvae.stages.cluster", "run_cluster"),
        ("scvae.stages.map", "run_map"),
        ("scvae.stages.preprocess", "run_preprocess"),
        ("scvae.preprocess.memory", "preprocess"),
        ("scvae.diagnostics.suite", "diagnose"),
        # A constant of the same module (PCA_N_COMPONENTS), and one imported from another
        # module of the package (HARMONY_N_COMPONENTS, DEFAULT_PRESET).
        ("scvae.baseline", "pca"),
        ("scvae.baseline", "harmony"),
        ("scvae.model", "train"),
    ],
)
def test_source_defaults_equal_the_imported_signature(module, function):
    assert source_defaults(module, function) == _python_defaults(module, function)


def test_reading_the_source_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys\nfrom scvae.utils.signature import source_defaults\n"
        "source_defaults('scvae.stages.cluster', 'run_cluster')\n"
        "source_defaults('scvae.diagnostics.suite', 'diagnose')\n"
        "print(' '.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.split(".")[0] for m in out.stdout.split()}
    assert not {"torch", "pyro", "scanpy", "anndata"} & loaded


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package named like ours, in a temporary folder, to read unusual sources from."""
    root = tmp_path / "scvae"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("LIMIT = 7\n")
    monkeypatch.setattr(signature, "PACKAGE_DIR", root)
    return root


def test_constants_are_followed_through_imports_and_aliases(package):
    (package / "consts.py").write_text("from scvae.sub import LIMIT as CAP\nSIZE: int = -3\n")
    (package / "mod.py").write_text(
        "from scvae.consts import CAP, SIZE\nSPAN = SIZE\n"
        "def f(a, b=2, /, c=CAP, *, d=SPAN, e, g=(1.0, 'x'), h=None):\n    pass\n"
    )
    assert source_defaults("scvae.mod", "f") == {
        "b": 2,
        "c": 7,
        "d": -3,
        "g": (1.0, "x"),
        "h": None,
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import os\ndef f(a=os.sep):\n    pass\n", r"mod.py: f\(a=...\): the default 'os.sep'"),
        ("def f(a=len('x')):\n    pass\n", "neither a literal nor a constant"),
        ("def f(a=UNDEFINED):\n    pass\n", "'UNDEFINED' is not a constant of scvae.mod"),
        ("def g():\n    pass\n", "no function 'f'"),
    ],
)
def test_what_cannot_be_read_without_running_the_module_is_an_error(package, source, message):
    (package / "mod.py").write_text(source)
    with pytest.raises(ValueError, match=message):
        source_defaults("scvae.mod", "f")


def test_only_modules_of_the_package_are_read(package):
    with pytest.raises(ValueError, match="not a module of the scvae package"):
        source_defaults("os.path", "join")
    with pytest.raises(ValueError, match="'scvae.nope' not found"):
        source_defaults("scvae.nope", "f")
