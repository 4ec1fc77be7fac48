"""The core package works without its extras, and a missing extra is named in the error.

The subprocess test hides the extras' modules (a meta-path finder that refuses them, as an
install without them would) and runs what a library user runs: train, embed; then the
integration metrics and the Harmony and scVI baselines, which must name the extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scvae.errors import MissingExtraError
from scvae.utils.extras import OPTIONAL_MODULES, import_optional, install_hint

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules that only the extras install (tests/test_dependencies.py checks that
# the core's requirements list none of their distributions).
EXTRA_ONLY = (
    "snakemake",
    "snakemake_executor_plugin_slurm",
    "jsonschema",
    "scib_metrics",
    "jax",
    "jaxlib",
    "harmonypy",
    "scvi",
)

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys

    BLOCKED = set(sys.argv[1].split(","))


    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, Refuse())

    import numpy as np
    import torch

    torch.set_num_threads(1)

    import scvae
    from scvae.baseline import BaselineUnavailable, harmony_embedding, scvi_embedding
    from scvae.data.synthetic import synthetic_counts
    from scvae.integration import scib_scores

    adata = synthetic_counts(60, 40, seed=0)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    model = scvae.train(
        adata, n_latent=3, n_hidden=16, max_epochs=3, batch_size=32, threads=1,
        seed=0, progress=False,
    )
    z = model.get_latent(adata)
    out = {"latent": list(z.shape), "finite": bool(np.isfinite(z).all()), "errors": {}}
    calls = {
        "scib": lambda: scib_scores(z, adata.obs["batch"], X_pre=z),
        "harmony": lambda: harmony_embedding(adata, batch_keys=["batch"], n_components=5),
        "scvi": lambda: scvi_embedding(adata),
    }
    for what, call in calls.items():
        try:
            call()
        except ImportError as err:
            out["errors"][what] = [type(err).__name__, str(err)]
            if what != "scib":
                assert isinstance(err, BaselineUnavailable), type(err)
    print(json.dumps(out))
    """
)


def test_the_core_trains_and_embeds_without_the_extras(tmp_path):
    script = tmp_path / "core.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), ",".join(EXTRA_ONLY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["latent"] == [60, 3] and out["finite"]
    assert set(out["errors"]) == {"scib", "harmony", "scvi"}, out["errors"]
    for what, extra, dist in [
        ("scib", "integration", "scib-metrics"),
        ("harmony", "integration", "harmonypy"),
        ("scvi", "scvi", "scvi-tools"),
    ]:
        _, message = out["errors"][what]
        assert f"pip install 'scvae[{extra}]'" in message, message
        assert dist in message, message


def test_every_optional_module_is_declared_by_its_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, (dist, extra) in OPTIONAL_MODULES.items():
        assert extra in extras, f"{module}: pyproject.toml has no extra [{extra}]"
        names = {canonicalize_name(Requirement(line).name) for line in extras[extra]}
        assert canonicalize_name(dist) in names, f"[{extra}] does not list {dist} ({module})"


def test_import_optional_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "harmonypy", None)  # an import of it now fails
    with pytest.raises(MissingExtraError, match=r"harmonypy.*pip install 'scvae\[integration\]'"):
        import_optional("harmonypy", "the Harmony baseline")
    assert install_hint("scvi") == "pip install 'scvae[scvi]'"


def test_import_optional_returns_an_installed_module():
    # The test venv (`.[test]`) has the integration extra.
    assert import_optional("harmonypy", "the Harmony baseline").__name__ == "harmonypy"
