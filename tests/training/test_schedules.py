"""KL-weight schedules are pure functions of the step."""

from __future__ import annotations

import pytest

from scvae.training.schedules import CellClock, KLSchedule


def test_constant():
    s = KLSchedule("constant", beta=4.0, total_steps=100)
    assert [s(i) for i in (0, 50, 99, 500)] == [4.0] * 4
    assert s.warmup_steps == 0


def test_linear_reaches_beta_at_the_end_of_the_warmup_and_stays():
    s = KLSchedule("linear", beta=2.0, total_steps=1000, warmup_fraction=0.4)
    assert s(0) == 0.0
    assert s(200) == pytest.approx(1.0)
    assert s(399) == pytest.approx(2.0 * 399 / 400)
    assert s(400) == 2.0
    assert s(10_000) == 2.0  # beyond the planned steps: full weight, never below
    assert s.warmup_steps == 400
    values = [s(i) for i in range(1000)]
    assert values == sorted(values)


def test_step_based_warmup_does_not_depend_on_dataset_size():
    # Same fraction of training -> same weight, whatever the steps per epoch.
    small = KLSchedule("linear", total_steps=10 * 400, warmup_fraction=0.5)
    large = KLSchedule("linear", total_steps=1000 * 400, warmup_fraction=0.5)
    assert small(10 * 100) == pytest.approx(large(1000 * 100)) == pytest.approx(0.5)


def test_sigmoid_is_monotone_and_centred():
    s = KLSchedule("sigmoid", beta=1.0, total_steps=100, warmup_fraction=1.0)
    values = [s(i) for i in range(100)]
    assert values == sorted(values)
    assert s(50) == pytest.approx(0.5)
    assert values[0] < 0.01 and values[-1] > 0.99


def test_cyclical_follows_fu_et_al():
    s = KLSchedule("cyclical", beta=1.0, total_steps=400, n_cycles=4, ratio=0.5)
    # Each 100-step cycle: ramp over 50 steps, then 1.
    assert s(0) == 0.0 and s(25) == pytest.approx(0.5) and s(50) == 1.0 and s(99) == 1.0
    assert s(100) == 0.0 and s(125) == pytest.approx(0.5) and s(399) == 1.0
    assert s(400) == 1.0
    assert s.warmup_steps == 350


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "cosine"}, {"beta": -1.0}, {"warmup_fraction": 1.5}, {"n_cycles": 0}, {"ratio": 0.0}],
)
def test_invalid_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        KLSchedule(**kwargs)


def test_max_warmup_steps_shortens_the_warmup_and_never_lengthens_it():
    s = KLSchedule("linear", total_steps=1000, warmup_fraction=0.5, max_warmup_steps=100)
    assert s.warmup_steps == 100 and s(50) == pytest.approx(0.5) and s(100) == 1.0
    longer = KLSchedule("linear", total_steps=1000, warmup_fraction=0.5, max_warmup_steps=900)
    assert longer.warmup_steps == 500 and longer(250) == pytest.approx(0.5)
    sigmoid = KLSchedule("sigmoid", total_steps=1000, warmup_fraction=1.0, max_warmup_steps=10)
    assert sigmoid(5) == pytest.approx(0.5) and sigmoid(10) == 1.0
    with pytest.raises(ValueError, match="max_warmup_steps"):
        KLSchedule(max_warmup_steps=-1)


def test_cell_clock_converts_cells_and_steps_both_ways():
    clock = CellClock([64, 64, 40])  # 168 cells per epoch
    assert (clock.steps_per_epoch, clock.cells_per_epoch) == (3, 168)
    assert [clock.cells_at(s) for s in range(7)] == [0, 64, 128, 168, 232, 296, 336]
    # The fewest steps that see at least that many cells.
    assert [clock.steps_to(c) for c in (0, 1, 64, 65, 168, 169, 337)] == [0, 1, 1, 2, 3, 4, 7]
    for cells in range(0, 1000, 7):
        step = clock.steps_to(cells)
        assert clock.cells_at(step) >= cells > clock.cells_at(step - 1) or cells == 0
    assert clock.planned_steps(10) == 30
    assert clock.planned_steps(10, max_cells=200) == 4  # the cap comes first
    assert clock.planned_steps(1, max_cells=10_000) == 3  # max_epochs comes first
    with pytest.raises(ValueError, match="batch sizes"):
        CellClock([])
