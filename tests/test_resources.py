"""Memory and run-time estimates of the workflow's jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from scvae.resources import (
    SMALL_DATASET_MB,
    cluster_minutes,
    diagnose_minutes,
    files_mb,
    gpu_count,
    h5ad_dims,
    input_dims,
    mem_mb,
    postprocess_group,
    reads_on_disk,
    runtime_minutes,
    train_minutes,
    trainings_minutes,
)
from scvae.training.settings import default_settings

ROOT = Path(__file__).resolve().parents[1]
CELLBENCH = ROOT / ".test" / "data" / "cellbench192.h5ad"


def test_memory_is_a_floor_plus_a_share_of_the_input_and_grows_with_each_attempt():
    assert mem_mb(100, factor=4, floor=2000) == 2400
    assert mem_mb(100, factor=4, floor=2000, attempt=3) == 3 * 2400
    # Counts on disk: memory follows the cells, not the counts.
    assert mem_mb(4000, factor=4, floor=2000, on_disk_factor=0.5, on_disk=True) == 4000
    assert mem_mb(4000, factor=4, floor=2000, on_disk_factor=0.5, on_disk=False) == 18000
    # Without a factor for the on-disk case, reading backed changes nothing.
    assert mem_mb(4000, factor=4, floor=2000, on_disk=True) == 18000


def test_runtime_is_minutes_plus_minutes_per_gb():
    assert runtime_minutes(0, minutes=15, per_gb=30) == 15
    assert runtime_minutes(2048, minutes=15, per_gb=30) == 75
    assert runtime_minutes(2048, minutes=15, per_gb=30, attempt=2) == 150


def test_training_time_grows_with_epochs_cells_width_and_falls_with_threads_and_a_gpu():
    s = default_settings()  # 150 epochs, 128 hidden units, one layer each
    # 8e-9 s x 150 epochs x 10^4 cells x 2,000 genes x 128 = 3,072 s = 51.2 min, + 15.
    assert train_minutes(s, 10_000, 2000) == 66
    assert train_minutes(s, 10_000, 2000, attempt=2) == 132
    assert train_minutes({**s, "max_epochs": 300}, 10_000, 2000) == 15 + 102
    # A cap in cells seen bounds the estimate: 10^6 cells capped at 2 epochs' worth.
    capped = {**s, "max_epochs": 300, "max_cells": 2_000_000}
    assert train_minutes(capped, 1_000_000, 2000) == train_minutes(
        {**capped, "max_epochs": 2, "max_cells": 0}, 1_000_000, 2000
    )
    assert train_minutes({**s, "decoder_hidden": 256, "decoder_layers": 2}, 10_000, 2000) == (
        15 + int(51.2 * 4)
    )
    assert train_minutes(s, 10_000, 2000, threads=4) == 15 + int(51.2 / 2)
    assert train_minutes(s, 10_000, 2000, gpu=True) == 15 + int(51.2 / 5)


def test_diagnostics_and_clustering_times():
    s = default_settings()
    # 2e-10 s x 6 x 10^5 cells x 100 samples x 2,000 genes x 128 = 51.2 min, + 15.
    assert diagnose_minutes(s, 600_000, 2000, k_iwae=100) == 66
    assert diagnose_minutes(s, 600_000, 2000, k_iwae=100, threads=4, attempt=2) == 81
    # 1e-2 s x 6 x 10^4 cells x (1 + 0.2 x 2 resolutions) = 14 min, + 15.
    assert cluster_minutes(60_000, n_resolutions=2) == 29
    assert cluster_minutes(60_000, n_resolutions=2, attempt=3) == 87
    assert cluster_minutes(60_000, n_resolutions=4) > cluster_minutes(60_000, n_resolutions=2)


def test_a_job_of_trainings_sums_them_and_fills_in_the_package_defaults():
    # 2e-3 s x 150 epochs x 1,500 cells = 7.5 min each (aggressive epochs count 1.2).
    assert trainings_minutes([{}], 1500) == 10 + 7
    assert trainings_minutes([{}, {"max_epochs": 300}], 1500) == 10 + 22
    assert trainings_minutes([{"aggressive_epochs": 5}], 1500) == 10 + 15
    assert trainings_minutes([{}], 1500, attempt=2) == int(2 * 17.5)
    # All cells of a dataset not yet read: 10,000 assumed.
    assert trainings_minutes([{}], 0) == trainings_minutes([{}], None) == 10 + 50


def test_dimensions_come_from_the_h5ad_header_or_from_the_size(tmp_path):
    assert h5ad_dims(CELLBENCH) == (192, 1500)
    assert input_dims(CELLBENCH, size_mb=1e6) == (192, 1500)
    missing = tmp_path / "latent.h5ad"
    assert h5ad_dims(missing) is None
    (tmp_path / "not.h5ad").write_text("not HDF5")
    assert h5ad_dims(tmp_path / "not.h5ad") is None
    # Before the file exists: 16 bytes per stored count, 10% non-zero, 2,000 genes.
    assert input_dims(missing, size_mb=320) == (100_000, 2000)
    assert input_dims(missing, size_mb=0.1) == (1000, 2000)


def test_reads_on_disk_from_the_threshold_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", str(CELLBENCH.stat().st_size / (1 << 30)))
    assert reads_on_disk([CELLBENCH])
    assert not reads_on_disk([ROOT / ".test" / "data" / "pbmc300.h5"])  # not an h5ad
    monkeypatch.setenv("SCVAE_BACKED_MIN_GB", "1")
    assert not reads_on_disk([CELLBENCH])
    assert not reads_on_disk([tmp_path / "missing.h5ad"])


def test_small_datasets_group_their_post_training_jobs(tmp_path):
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    (folder / "matrix.mtx").write_bytes(b"x" * 1_000_000)
    (tmp_path / "b.h5").write_bytes(b"x" * 500_000)
    assert files_mb([folder, tmp_path / "b.h5"]) == pytest.approx(1.5)
    assert postprocess_group([folder, tmp_path / "b.h5"]) == "postprocess"
    big = tmp_path / "big.h5"
    with big.open("wb") as f:  # sparse: the size without the bytes
        f.truncate(int(SMALL_DATASET_MB * 1e6))
    assert postprocess_group([big]) is None
    assert files_mb([tmp_path / "missing.h5"]) is None
    assert postprocess_group([tmp_path / "missing.h5"]) is None


@pytest.mark.parametrize(
    ("device", "gpus"), [("cuda", 1), ("cuda:1", 1), ("cpu", None), ("auto", None)]
)
def test_only_cuda_runs_request_a_gpu(device, gpus):
    assert gpu_count(device) == gpus
