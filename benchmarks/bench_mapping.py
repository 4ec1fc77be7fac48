"""Label transfer by mapping onto a trained model: Kang control -> stimulated, CellBench plates.

Trains the ``recommended`` variant's settings on a reference, maps a query with
:func:`scvae.mapping.map_query` (new batches fitted with the reference frozen) and
prints the accuracy of the kNN label transfer against the query's own labels, and the
top marker genes of each Kang cell type. docs/interpretation.md quotes its output.

Run (about 10 minutes on 2 cores)::

    python benchmarks/bench_mapping.py --out benchmarks/mapping_records.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import scvae
from scvae.mapping import map_query
from scvae.markers import marker_table, rank_markers
from scvae.preprocess import preprocess
from scvae.presets import preset_settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def recommended(*, batches: bool) -> dict:
    """The ``recommended`` preset's settings (its batch-aware form on data with batches)."""
    return preset_settings("recommended", batches=batches)


def run_case(name, reference, query, *, batch_key, seed, epochs, extra=None) -> dict:
    """Train on ``reference``, map ``query``; the record with the accuracy."""
    reference = reference.copy()
    preprocess(reference, batch_key=batch_key)
    started = time.perf_counter()
    settings = {**recommended(batches=batch_key is not None), **(extra or {})}
    model = scvae.train(reference, batch_key=batch_key, seed=seed, progress=False, **settings)
    reference.obsm["X_scvae"] = model.get_latent(reference)
    _, _, record = map_query(
        model, query, reference=reference, batch_key=batch_key, epochs=epochs, seed=seed
    )
    record = {k: v for k, v in record.items() if k not in ("fine_tune_losses", "genes_missing")}
    record.update(
        case=name,
        seed=seed,
        fine_tune_epochs=epochs if record["new_categories"] else 0,
        batch_key=batch_key,
        extra_settings=extra or {},
        n_reference=int(reference.n_obs),
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(record))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the records here (JSON)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100, help="fine-tuning epochs")
    args = parser.parse_args()
    records = []

    kang = scvae.read_counts(DATA / "kang_ifnb_2conditions_counts.h5ad", label_key="cell_type")
    ranked = kang.copy()
    rank_markers(ranked, "label", n_genes=20)
    table = marker_table(ranked, n_top=5)
    markers = {g: list(t["gene"]) for g, t in table.groupby("group")}
    print(json.dumps({"kang_markers_top5": markers}))
    control = kang[kang.obs["condition"] == "control"].copy()
    stimulated = kang[kang.obs["condition"] == "stimulated"].copy()
    # Unconditional reference: the stimulated cells are encoded as they are.
    records.append(
        run_case("kang control -> stimulated (no batch)", control, stimulated,
                 batch_key=None, seed=args.seed, epochs=args.epochs)
    )  # fmt: skip
    # Conditional on the condition: "stimulated" is a new batch, fitted scArches-style.
    records.append(
        run_case("kang control -> stimulated (condition as batch)", control, stimulated,
                 batch_key="condition", seed=args.seed, epochs=args.epochs)
    )  # fmt: skip

    # The encoder sees the batch too: only then does the fit of the new batch move the
    # query's codes (without it the encoder ignores batches and the fit only serves the
    # decoder, e.g. decoded expression of the query).
    records.append(
        run_case("kang control -> stimulated (condition as batch, encode_covariates)",
                 control, stimulated, batch_key="condition", seed=args.seed,
                 epochs=args.epochs, extra={"encode_covariates": True})
    )  # fmt: skip

    bench = scvae.read_counts(DATA / "cellbench_5batches_counts.h5ad", label_key="cell_line")
    for held_out in ("sc_celseq2_5cl_p3", "sc_dropseq"):
        is_query = (bench.obs["batch"] == held_out).to_numpy()
        records.append(
            run_case(f"cellbench 4 plates -> {held_out}", bench[~is_query].copy(),
                     bench[is_query].copy(), batch_key="batch", seed=args.seed,
                     epochs=args.epochs)
        )  # fmt: skip
        records.append(
            run_case(f"cellbench 4 plates -> {held_out} (encode_covariates)",
                     bench[~is_query].copy(), bench[is_query].copy(), batch_key="batch",
                     seed=args.seed, epochs=args.epochs, extra={"encode_covariates": True})
        )  # fmt: skip
    if args.out:
        out = {"kang_markers_top5": markers, "records": records}
        Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print("accuracy:", {r["case"]: round(r.get("accuracy", np.nan), 3) for r in records})


if __name__ == "__main__":
    main()
