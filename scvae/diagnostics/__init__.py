"""Posterior-collapse diagnostics: one module per measure, the verdict, the AnnData edge."""

from scvae.utils.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(
    __name__,
    {
        "kl_per_dim": "scvae.diagnostics.kl",
        "posterior_mean_variance": "scvae.diagnostics.kl",
        "active_units": "scvae.diagnostics.kl",
        "mutual_information": "scvae.diagnostics.mi",
        "iwae_bound": "scvae.diagnostics.iwae",
        "iwae_log_likelihood": "scvae.diagnostics.iwae",
        "count_log_likelihood": "scvae.diagnostics.iwae",
        "kl_sensitivity_spearman": "scvae.diagnostics.jacobian",
        "decoder_jacobian": "scvae.diagnostics.jacobian",
        "dispersion_stats": "scvae.diagnostics.dispersion",
        "batch_in_latent": "scvae.diagnostics.batch",
        "VerdictThresholds": "scvae.diagnostics.verdicts",
        "verdict": "scvae.diagnostics.verdicts",
        "VERDICTS": "scvae.diagnostics.verdicts",
        "is_collapsed": "scvae.diagnostics.verdicts",
        "FIGURE_NAMES": "scvae.diagnostics.suite",
        "diagnose": "scvae.diagnostics.suite",
        "write_diagnostics": "scvae.diagnostics.suite",
        "read_diagnostics": "scvae.diagnostics.suite",
    },
)
