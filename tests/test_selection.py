import numpy as np
import pandas as pd
import pytest

from scvae.selection import candidate_means, leave_one_dataset_out


def _records():
    # a wins on d1 and d2, b wins on d3; c is missing on d3.
    rows = []
    scores = {
        ("d1", "a"): 0.9,
        ("d1", "b"): 0.5,
        ("d1", "c"): 0.95,
        ("d2", "a"): 0.8,
        ("d2", "b"): 0.6,
        ("d2", "c"): 0.99,
        ("d3", "a"): 0.1,
        ("d3", "b"): 0.7,
    }
    for (d, m), s in scores.items():
        for seed in (0, 1):
            rows.append({"dataset": d, "method": m, "seed": seed, "ari": s + 0.01 * seed, "nmi": s})
    return pd.DataFrame(rows)


def test_candidate_means_gives_mean_sd_and_seed_count():
    out = candidate_means(_records(), ["ari"])
    assert out.loc[("d1", "a"), "ari_mean"] == pytest.approx(0.905)
    assert out.loc[("d1", "a"), "ari_sd"] == pytest.approx(np.std([0.9, 0.91], ddof=1))
    assert out.loc[("d1", "a"), "n_seeds"] == 2


def test_each_dataset_gets_the_candidate_chosen_on_the_others():
    out = leave_one_dataset_out(_records(), ["a", "b", "c"], ["ari", "nmi"]).set_index("dataset")
    # c has no runs on d3, so it is never chosen; on d3 held out, a (0.85) beats b (0.55).
    assert out.loc["d3", "chosen"] == "a"
    assert out.loc["d3", "ari_mean"] == pytest.approx(0.105)
    # d1 held out: a scores (0.8 + 0.1) / 2 = 0.45 on d2 and d3, b (0.6 + 0.7) / 2 = 0.65.
    assert out.loc["d1", "chosen"] == "b"
    assert out.loc["d1", "selection_score"] == pytest.approx((0.6025 + 0.7025) / 2)
    assert out.loc["d1", "ari_mean"] == pytest.approx(0.505)


def test_the_held_out_dataset_never_enters_its_own_choice():
    base = _records()
    changed = base.copy()
    # Making b perfect on d1 changes nothing about the choice for d1.
    changed.loc[(changed.dataset == "d1") & (changed.method == "b"), ["ari", "nmi"]] = 1.0
    a = leave_one_dataset_out(base, ["a", "b"], ["ari"]).set_index("dataset")
    b = leave_one_dataset_out(changed, ["a", "b"], ["ari"]).set_index("dataset")
    assert a.loc["d1", "chosen"] == b.loc["d1", "chosen"]


def test_needs_two_datasets_and_a_complete_candidate():
    one = _records().query("dataset == 'd1'")
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_dataset_out(one, ["a"], ["ari"])
    with pytest.raises(ValueError, match="every dataset"):
        leave_one_dataset_out(_records(), ["c"], ["ari"])
