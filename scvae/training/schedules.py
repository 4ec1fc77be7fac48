"""KL-weight schedules: pure functions of the optimizer step.

Schedules count optimizer steps, not epochs, so that a large dataset (many steps per
epoch) reaches full weight at the same fraction of training as a small one; an
epoch-based warm-up can leave large data below full weight when training stops early
(scvi-tools issue 1569). A budget given in cells seen (``warmup_cells``, ``max_cells``)
becomes steps through :class:`CellClock`, the cells seen after each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")


@dataclass(frozen=True)
class KLSchedule:
    """The KL weight as a function of the step.

    Parameters
    ----------
    kind
        ``"constant"`` (beta throughout), ``"linear"`` (0 -> beta over the first
        ``warmup_fraction`` of the steps), ``"sigmoid"`` (a logistic ramp centred in the
        warm-up window), ``"cyclical"`` (Fu et al. 2019: ``n_cycles`` cycles; in each, a
        linear ramp over the first ``ratio`` of the cycle, then beta).
    beta
        The full weight.
    total_steps
        Planned number of optimizer steps.
    warmup_fraction
        Fraction of ``total_steps`` of the linear and sigmoid warm-ups.
    n_cycles, ratio
        Cyclical schedule: number of cycles M and the ramp's share R of each cycle.
    max_warmup_steps
        Longest linear or sigmoid warm-up in steps: the warm-up spans
        ``min(warmup_fraction * total_steps, max_warmup_steps)`` steps (0: no bound).
    """

    kind: str = "constant"
    beta: float = 1.0
    total_steps: int = 1
    warmup_fraction: float = 0.0
    n_cycles: int = 4
    ratio: float = 0.5
    max_warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown KL schedule {self.kind!r}; expected one of {SCHEDULES}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if not 0 < self.ratio <= 1 or self.n_cycles < 1:
            raise ValueError("cyclical schedule needs n_cycles >= 1 and 0 < ratio <= 1")
        if self.max_warmup_steps < 0:
            raise ValueError(f"max_warmup_steps must be >= 0, got {self.max_warmup_steps}")

    def __call__(self, step: int) -> float:
        """Return the KL weight at ``step`` (0-based)."""
        return self.beta * _shape(self, step)

    @property
    def warmup_steps(self) -> int:
        """The first step from which the weight stays at beta until the end of training."""
        if self.kind == "constant":
            return 0
        if self.kind == "cyclical":
            cycle = self.total_steps / self.n_cycles
            return math.ceil((self.n_cycles - 1) * cycle + self.ratio * cycle)
        return math.ceil(self.warmup_length)

    @property
    def warmup_length(self) -> float:
        """Steps of the linear or sigmoid warm-up (fractional: the ramp's exact length)."""
        warm = self.warmup_fraction * self.total_steps
        if self.max_warmup_steps > 0:
            warm = min(warm, float(self.max_warmup_steps))
        return warm


def _shape(s: KLSchedule, step: int) -> float:
    if s.kind == "constant":
        return 1.0
    if s.kind == "cyclical":
        cycle = s.total_steps / s.n_cycles
        tau = (step % cycle) / cycle if step < s.total_steps else 1.0
        return min(1.0, tau / s.ratio)
    warm = s.warmup_length
    if warm <= 0 or step >= warm:
        return 1.0
    if s.kind == "linear":
        return step / warm
    # Logistic ramp from ~0.0025 at the start to ~0.9975 at the end of the window.
    return 1.0 / (1.0 + math.exp(-12.0 * (step / warm - 0.5)))


class CellClock:
    """Cells seen after each optimizer step, from the batch sizes of one epoch.

    Every epoch cuts the same number of training cells into the same batch sizes (only
    which cells go where changes), so the cells seen after ``step`` steps are known in
    advance, and a budget in cells (the KL warm-up, the cap) converts exactly into steps.

    Parameters
    ----------
    batch_sizes
        Cells in each minibatch of an epoch, in order
        (:meth:`scvae.data.loaders.CountBatches.batches`).
    """

    def __init__(self, batch_sizes) -> None:
        sizes = np.asarray(batch_sizes, dtype=np.int64)
        if sizes.ndim != 1 or len(sizes) == 0 or (sizes < 1).any():
            raise ValueError("batch_sizes must be a non-empty list of positive batch sizes")
        self._cumulative = np.cumsum(sizes)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return len(self._cumulative)

    @property
    def cells_per_epoch(self) -> int:
        """Training cells seen per epoch."""
        return int(self._cumulative[-1])

    def cells_at(self, step: int) -> int:
        """Return the cells seen after ``step`` steps."""
        epochs, rest = divmod(int(step), self.steps_per_epoch)
        partial = int(self._cumulative[rest - 1]) if rest else 0
        return epochs * self.cells_per_epoch + partial

    def steps_to(self, cells: int) -> int:
        """Return the fewest steps after which at least ``cells`` cells have been seen."""
        epochs, rest = divmod(int(cells), self.cells_per_epoch)
        partial = int(np.searchsorted(self._cumulative, rest, side="left")) + 1 if rest else 0
        return epochs * self.steps_per_epoch + partial

    def planned_steps(self, max_epochs: int, max_cells: int = 0) -> int:
        """Return the steps of a full training: ``max_epochs``, or fewer if ``max_cells`` cap it.

        Parameters
        ----------
        max_epochs
            Most passes over the training cells.
        max_cells
            Most cells seen (0: no cap).

        Returns
        -------
        int
            Steps of a run that neither early stopping nor an error ends.
        """
        steps = max_epochs * self.steps_per_epoch
        return min(steps, self.steps_to(max_cells)) if max_cells > 0 else steps
