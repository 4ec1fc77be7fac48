"""Posterior-collapse diagnostics: one module per measure, the verdict, the AnnData edge."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "kl_per_dim": "scvae.diagnostics.core",
        "posterior_mean_variance": "scvae.diagnostics.core",
        "active_units": "scvae.diagnostics.core",
        "mutual_information": "scvae.diagnostics.core",
        "iwae_bound": "scvae.diagnostics.core",
        "iwae_log_likelihood": "scvae.diagnostics.core",
        "kl_sensitivity_spearman": "scvae.diagnostics.core",
        "decoder_jacobian": "scvae.diagnostics.core",
        "dispersion_stats": "scvae.diagnostics.core",
        "VerdictThresholds": "scvae.diagnostics.core",
        "verdict": "scvae.diagnostics.core",
        "VERDICTS": "scvae.diagnostics.core",
        "FIGURE_NAMES": "scvae.diagnostics.core",
        "diagnose": "scvae.diagnostics.core",
        "write_diagnostics": "scvae.diagnostics.core",
        "read_diagnostics": "scvae.diagnostics.core",
        "run_diagnose": "scvae.diagnostics.core",
    },
)
