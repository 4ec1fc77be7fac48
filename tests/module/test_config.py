"""Architecture settings: unknown options and out-of-range values are rejected."""

from __future__ import annotations

import pytest

from scvae.module.config import VAEConfig


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(n_input=5, likelihood="gauss")
    with pytest.raises(ValueError, match="skip"):
        VAEConfig(n_input=5, skip="maybe")
    with pytest.raises(ValueError, match="theta"):
        VAEConfig(n_input=5, theta=-1.0)


def test_covariate_fields_are_checked_and_serialize_as_lists():
    cfg = VAEConfig(n_input=5, dispersion="gene-batch", n_categories=[3, 2], n_batch=3)
    assert cfg.n_categories == (3, 2) and cfg.n_covariates == 5
    assert cfg.to_dict()["n_categories"] == [3, 2]
    assert VAEConfig(**{**cfg.to_dict(), "n_input": 5}) == cfg
    with pytest.raises(ValueError, match="n_categories"):
        VAEConfig(n_input=5, n_categories=(0,))
    with pytest.raises(ValueError, match="n_batch"):
        VAEConfig(n_input=5, n_categories=(3,), n_batch=2)
    with pytest.raises(ValueError, match="condition_on_batch"):
        VAEConfig(n_input=5, n_categories=(3,), condition_on_batch=False)
