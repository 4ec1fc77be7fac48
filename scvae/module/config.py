"""Architecture settings of the count VAE: plain values, importable without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LIKELIHOODS = ("nb", "zinb", "poisson")
DISPERSIONS = ("gene", "gene-cell")
LIBRARIES = ("observed", "latent")
SKIPS = ("none", "ungated", "gated")
ENCODER_INPUTS = ("log1p", "normalized")


@dataclass
class VAEConfig:
    """Architecture of a :class:`VAE`; every field is a plain value so it serializes.

    Attributes
    ----------
    n_input
        Number of genes.
    n_latent
        Dimension of z.
    n_hidden, n_layers
        Width and depth of the encoder.
    decoder_hidden, decoder_layers
        Width (0 = ``n_hidden``) and depth of the decoder; 0 layers is a linear decoder
        (a factor model, as LDVAE), a deep, wide decoder is the "over-powerful decoder"
        of the collapse literature.
    dropout
        Dropout in the encoder.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one theta per gene) or ``"gene-cell"`` (a decoder head).
    theta
        Fixed inverse dispersion for every gene and cell (0 = learn it). A small value is
        the "noisy decoder": large variance mutes the reconstruction term.
    theta_init
        Initial inverse dispersion when it is learned.
    library
        ``"observed"``: the library size is the cell's total count; ``"latent"``: a
        log-normal latent with a data-driven prior, as in scVI.
    skip
        ``"none"``; ``"ungated"``: the decoder's last hidden layer also receives a summary
        of x (bypasses z); ``"gated"``: that summary is multiplied by a sigmoid gate
        computed from z alone.
    skip_dropout
        Probability that a cell's skip path is switched off in a training step (inverted
        dropout on the whole path, per cell). For those cells only z can carry the
        information, and the encoder cannot tell which cells they are, so z has to
        encode every cell.
    z_skip
        Feed z to every decoder layer and to the output layer (Skip-VAE, Dieng et al.
        2019), so that deep decoders cannot wash z out.
    encoder_input
        What the encoder sees: ``"log1p"`` of the raw counts (as scVI), or
        ``"normalized"``: ``log1p`` of counts scaled to 10,000 per cell, so that the
        encoder does not spend capacity on library size (the decoder still models raw
        counts with the observed library).
    bn_gamma
        BN-VAE (Zhu et al. 2020): batch-normalize the posterior means with this fixed
        scale, which bounds the expected KL per dimension below by ``bn_gamma**2 / 2``.
        0 disables it.
    """

    n_input: int
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    decoder_hidden: int = 0
    decoder_layers: int = 1
    dropout: float = 0.1
    likelihood: str = "nb"
    dispersion: str = "gene"
    theta: float = 0.0
    theta_init: float = 1.0
    library: str = "observed"
    skip: str = "none"
    skip_dropout: float = 0.0
    z_skip: bool = False
    bn_gamma: float = 0.0
    encoder_input: str = "log1p"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("dispersion", self.dispersion, DISPERSIONS),
            ("library", self.library, LIBRARIES),
            ("skip", self.skip, SKIPS),
            ("encoder_input", self.encoder_input, ENCODER_INPUTS),
        ):
            if value not in allowed:
                raise ValueError(f"model setting {name}={value!r} is not one of {allowed}")
        for name in ("n_input", "n_latent", "n_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"model setting {name} must be >= 1, got {getattr(self, name)}")
        for name in ("theta", "bn_gamma", "dropout", "decoder_hidden", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"model setting {name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.skip_dropout < 1:
            raise ValueError(
                f"model setting skip_dropout must be in [0, 1), got {self.skip_dropout}"
            )
        if self.theta_init <= 0:
            raise ValueError(f"model setting theta_init must be > 0, got {self.theta_init}")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return asdict(self)
