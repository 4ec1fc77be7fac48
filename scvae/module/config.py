"""Architecture settings of the count VAE: plain values, importable without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

LIKELIHOODS = ("nb", "zinb", "poisson")
DISPERSIONS = ("gene", "gene-cell", "gene-batch")
LIBRARIES = ("observed", "latent")
SKIPS = ("none", "ungated", "gated")
ENCODER_INPUTS = ("log1p", "normalized")
DATA_FIELDS = ("n_input", "n_categories", "n_batch")
"""Fields of :class:`VAEConfig` set from the data, not by the user."""


@dataclass
class VAEConfig:
    """Architecture of a :class:`VAE`; every field is a plain value so it serializes.

    Attributes
    ----------
    n_input
        Number of genes.
    n_categories
        Categories of each covariate the model is conditioned on (the batch first when
        there is one; empty: an unconditional model). Set from the data by
        :func:`scvae.train`, like ``n_input``.
    n_batch
        Categories of the batch (the first covariate); 0 when no covariate is a batch.
        Set from the data by :func:`scvae.train`.
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
        ``"gene"`` (one theta per gene), ``"gene-cell"`` (a decoder head) or
        ``"gene-batch"`` (one theta per gene and batch, as scVI's; without a batch it is
        ``"gene"``).
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
    condition_on_batch
        Condition on the batch and the covariates when the data have them (a conditional
        VAE, as scVI): their one-hot codes enter every decoder layer (per-gene offsets of
        a linear decoder), and a latent library gets a prior per batch. False trains the
        unconditional model (the codes are ignored), for comparison.
    encode_covariates
        The encoder also sees the covariates (in every layer), as scVI's option of the
        same name; by default only the decoder does.
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
    condition_on_batch: bool = True
    encode_covariates: bool = False
    n_categories: tuple[int, ...] = ()
    n_batch: int = 0

    def __post_init__(self) -> None:
        # A saved or JSON config holds a list.
        self.n_categories = tuple(int(k) for k in self.n_categories)
        if any(k < 1 for k in self.n_categories):
            raise ValueError(
                f"model setting n_categories must hold counts >= 1, got {self.n_categories}"
            )
        if self.n_batch < 0 or (self.n_batch > 0 and self.n_categories[:1] != (self.n_batch,)):
            raise ValueError(
                f"model setting n_batch={self.n_batch} must be 0 or the first of "
                f"n_categories={self.n_categories}"
            )
        if self.n_categories and not self.condition_on_batch:
            raise ValueError(
                "model setting condition_on_batch=False: the model takes no covariates, "
                f"but n_categories={self.n_categories}"
            )
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

    @property
    def n_covariates(self) -> int:
        """Width of the one-hot covariates: the sum of :attr:`n_categories`."""
        return sum(self.n_categories)

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (``n_categories`` as a list)."""
        out = asdict(self)
        out["n_categories"] = list(self.n_categories)
        return out
