"""Command-line interface: one subcommand per workflow stage.

Each subcommand is a thin wrapper over a ``run_*`` function of the package. Errors on bad
input, bad settings, a failed training and outputs that cannot be written (full disk,
no permission) are printed as one line naming the file or setting and the problem (no
traceback) and exit with status 1, so that they reach the console of a Snakemake run as
well as the log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from scvae.errors import InputError, MissingExtraError, TrainingError
from scvae.workflow_runs import BASELINE_METHODS, HARMONY_N_COMPONENTS

log = logging.getLogger("scvae")


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _samples_arg(values: list[str]) -> dict[str, str]:
    """``--samples``: NAME=PATH words, or one JSON object of name -> path."""
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            samples = json.loads(values[0])
        except json.JSONDecodeError as err:
            raise ValueError(f"--samples: not valid JSON: {err}") from None
        if not isinstance(samples, dict) or not all(isinstance(v, str) for v in samples.values()):
            raise ValueError("--samples: expected a JSON object of sample name -> path")
        return samples
    samples = {}
    for word in values:
        name, sep, path = word.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--samples: {word!r} is not NAME=PATH")
        if name in samples:
            raise ValueError(f"--samples: sample {name!r} is given twice")
        samples[name] = path
    return samples


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _target_sum_arg(text: str) -> float | None:
    # On use: scvae.baseline loads scanpy, which `scvae --help` must not.
    from scvae.baseline import parse_target_sum

    try:
        return parse_target_sum(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)


# The commands import their stage (and torch) when they run, not at the top: `scvae --help`
# loads no torch, Pyro or scanpy (tests/test_layout.py) and each command only its own stage.


def _cmd_preprocess(args: argparse.Namespace) -> None:
    from scvae.stages.preprocess import run_preprocess

    run_preprocess(
        args.input,
        args.output,
        args.qc_plot,
        samples=None if args.samples is None else _samples_arg(args.samples),
        batch_key=args.batch_key,
        covariates=args.covariates,
        format=args.format,
        label_key=args.label_key,
        layer=args.layer,
        transpose=args.transpose,
        **args.params,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    import torch

    from scvae.stages.train import run_train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dict(args.settings)
    if args.threads:
        settings["threads"] = args.threads
    run_train(
        args.input,
        args.model,
        args.history,
        args.latent,
        checkpoint_dir=args.checkpoint_dir,
        settings=settings,
    )


def _cmd_diagnose(args: argparse.Namespace) -> None:
    import torch

    from scvae.stages.diagnose import run_diagnose

    if args.threads:
        torch.set_num_threads(args.threads)
    run_diagnose(
        args.model,
        args.input,
        args.output,
        figure_dir=args.figure_dir,
        device=args.device,
        **args.params,
    )


def _cmd_baseline(args: argparse.Namespace) -> None:
    from scvae.stages.baseline import run_baseline

    run_baseline(
        args.input,
        args.output,
        method=args.method,
        n_components=args.n_components,
        seed=args.seed,
        max_epochs=args.max_epochs,
        target_sum=args.target_sum,
        n_threads=args.threads,
    )


def _cmd_cluster(args: argparse.Namespace) -> None:
    from scvae.stages.cluster import run_cluster

    run_cluster(
        args.input,
        args.output,
        args.metrics,
        diagnostics_json=args.diagnostics,
        umap_plot=args.umap_plot,
        markers_tsv=args.markers,
        marker_plot=args.marker_plot,
        known_markers=args.known_markers,
        known_markers_plot=args.known_markers_plot,
        model_path=args.model,
        **args.params,
    )


def _cmd_compare(args: argparse.Namespace) -> None:
    from scvae.stages.compare import run_compare

    run_compare(
        args.dataset,
        args.runs,
        args.output,
        args.summary,
        figure_dir=args.figure_dir,
        notes=args.note or [],
    )


def _cmd_map(args: argparse.Namespace) -> None:
    import torch

    from scvae.stages.map import run_map

    if args.threads:
        torch.set_num_threads(args.threads)
    run_map(
        args.model,
        args.reference,
        args.query,
        args.output,
        args.joint,
        args.record,
        model_out=args.model_out,
        umap_plot=args.umap_plot,
        format=args.format,
        layer=args.layer,
        label_key=args.label_key,
        batch_key=args.batch_key,
        transpose=args.transpose,
        **args.params,
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from scvae.stages.export import run_export

    run_export(args.input, args.output)


def _cmd_decode(args: argparse.Namespace) -> None:
    from scvae.stages.decode import run_decode

    run_decode(
        args.input,
        args.output,
        model=args.model,
        transform_batch=args.transform_batch,
        batch_size=args.batch_size,
    )


def _cmd_convert_model(args: argparse.Namespace) -> None:
    from scvae.model import SCVAE

    SCVAE.convert(args.old, args.new, i_trust_this_file=args.i_trust_this_file)


def _cmd_atlas_run(args: argparse.Namespace) -> None:
    import torch

    from scvae.atlas.jobs import run_atlas_job

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.runs["runs"]
    if args.threads:
        runs = [{**r, "settings": {**r["settings"], "threads": args.threads}} for r in runs]
    run_atlas_job(args.input, args.output, runs, dataset=args.dataset, **args.params)


def _cmd_atlas_report(args: argparse.Namespace) -> None:
    from scvae.atlas.report import run_atlas_report

    run_atlas_report(
        args.inputs,
        args.table,
        args.summary,
        remedies=args.remedies,
        figure_dir=args.figure_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``scvae`` argument parser."""
    parser = argparse.ArgumentParser(prog="scvae", description=__doc__.splitlines()[0])
    parser.add_argument("--log", help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="read counts, QC-filter, select genes")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="counts file or 10x folder")
    source.add_argument(
        "--samples",
        nargs="+",
        metavar="NAME=PATH",
        help="one file per sample (the sample name is the batch), or one JSON object",
    )
    p.add_argument("--output", required=True, help="preprocessed .h5ad")
    p.add_argument("--qc-plot", required=True, help="QC figure (.png)")
    p.add_argument("--format", default=None, help="input format (detected when omitted)")
    p.add_argument("--label-key", default=None, help="obs column holding cell-type labels")
    p.add_argument("--layer", default=None, help="h5ad/loom layer holding the counts")
    p.add_argument("--transpose", action="store_true", help="text input is genes x cells")
    p.add_argument("--batch-key", default=None, help="obs column holding each cell's batch")
    p.add_argument(
        "--covariates", nargs="+", default=[], metavar="COLUMN", help="categorical obs columns"
    )
    p.add_argument("--params", type=_json_arg, default={}, help="filter settings as JSON")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", help="train a count VAE")
    p.add_argument("--input", required=True, help="preprocessed .h5ad")
    p.add_argument("--model", required=True, help="output model.pt")
    p.add_argument("--history", required=True, help="output history.tsv")
    p.add_argument("--latent", required=True, help="output latent.h5ad")
    p.add_argument("--checkpoint-dir", default=None, help="checkpoints (resumed when present)")
    p.add_argument("--settings", type=_json_arg, default={}, help="model/training settings JSON")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("diagnose", help="posterior-collapse diagnostics")
    p.add_argument("--model", required=True, help="model.pt")
    p.add_argument("--input", required=True, help="latent.h5ad of the same run")
    p.add_argument("--output", required=True, help="diagnostics.json")
    p.add_argument("--figure-dir", required=True, help="folder for the diagnostic figures")
    p.add_argument("--params", type=_json_arg, default={}, help="diagnostic settings JSON")
    p.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:<n> or auto (CUDA when available)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("baseline", help="baseline embedding (pca, harmony, scvi)")
    p.add_argument("--input", required=True, help="preprocessed .h5ad")
    p.add_argument("--output", required=True, help="latent.h5ad with obsm['X_scvae']")
    p.add_argument("--method", required=True, choices=BASELINE_METHODS)
    p.add_argument(
        "--n-components",
        type=int,
        default=None,
        help="pca: components (required); harmony: PCA components (default "
        f"{HARMONY_N_COMPONENTS}); "
        "scvi: n_latent (default: scvi-tools')",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-epochs", type=int, default=None, help="scvi: epochs (default: scvi-tools' rule)"
    )
    p.add_argument(
        "--target-sum",
        type=_target_sum_arg,
        default=None,
        help="pca, harmony: counts per cell after normalize_total, or 'median' (the default)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="harmony, scvi: threads (0: the library's default)"
    )
    p.set_defaults(func=_cmd_baseline)

    p = sub.add_parser("cluster", help="kNN graph, Leiden, UMAP and scores on the latent")
    p.add_argument("--input", required=True, help="latent.h5ad")
    p.add_argument("--output", required=True, help="final.h5ad")
    p.add_argument("--metrics", required=True, help="metrics.json")
    p.add_argument("--diagnostics", default=None, help="diagnostics.json to embed in uns")
    p.add_argument("--umap-plot", default=None, help="UMAP figure (.png)")
    p.add_argument("--markers", default=None, help="marker genes table (.tsv)")
    p.add_argument("--marker-plot", default=None, help="marker genes dot plot (.png)")
    p.add_argument(
        "--known-markers",
        type=_json_arg,
        default=None,
        help='known marker genes as JSON, cell type -> genes: {"B": ["MS4A1", "CD79A"]}',
    )
    p.add_argument(
        "--known-markers-plot", default=None, help="dot plot of the known marker genes (.png)"
    )
    p.add_argument("--model", default=None, help="the run's model.pt (for cluster: decoded)")
    p.add_argument("--params", type=_json_arg, default={}, help="clustering settings JSON")
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser("compare", help="comparison table across variants, seeds, baselines")
    p.add_argument("--dataset", required=True)
    p.add_argument("--runs", nargs="+", required=True, help="run folders holding metrics.json")
    p.add_argument("--output", required=True, help="comparison.tsv")
    p.add_argument("--summary", required=True, help="summary.tsv")
    p.add_argument("--figure-dir", required=True, help="folder for the comparison figures")
    p.add_argument("--note", action="append", help="a note for the report (repeatable)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("map", help="map a query dataset onto a trained model, transfer labels")
    p.add_argument("--model", required=True, help="the trained model.pt")
    p.add_argument("--reference", required=True, help="latent.h5ad of the same run")
    p.add_argument("--query", required=True, help="the query's counts (any input format)")
    p.add_argument("--output", required=True, help="query.h5ad: codes, transferred labels")
    p.add_argument("--joint", required=True, help="joint.h5ad: codes and UMAP of both")
    p.add_argument("--record", required=True, help="map.json: what was done, accuracy")
    p.add_argument("--model-out", default=None, help="the model used (extended for new batches)")
    p.add_argument("--umap-plot", default=None, help="joint UMAP figure (.png)")
    p.add_argument("--format", default=None, help="query format (detected when omitted)")
    p.add_argument("--layer", default=None, help="h5ad/loom layer holding the query's counts")
    p.add_argument("--label-key", default=None, help="query obs column with labels (accuracy)")
    p.add_argument("--batch-key", default=None, help="query obs column holding the batch")
    p.add_argument("--transpose", action="store_true", help="text input is genes x cells")
    p.add_argument("--params", type=_json_arg, default={}, help="n_neighbors, epochs, seed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd_map)

    p = sub.add_parser(
        "export",
        help="write a run's file with everything attached (counts, embedding) as one h5ad",
    )
    p.add_argument("--input", required=True, help="final.h5ad or latent.h5ad of a run")
    p.add_argument("--output", required=True, help="the self-contained .h5ad")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "decode",
        help="write a VAE run with its decoded expression (layers['scvae_normalized']) as one h5ad",
    )
    p.add_argument("--input", required=True, help="final.h5ad or latent.h5ad of a VAE run")
    p.add_argument("--output", required=True, help="the self-contained .h5ad")
    p.add_argument("--model", default=None, help="model.pt (default: the one next to --input)")
    p.add_argument(
        "--transform-batch", default=None, help="decode every cell as if from this batch"
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="cells decoded at once")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser(
        "convert-model",
        help="rewrite an old-format model.pt (a full pickle) in the safe format; unpickles it",
    )
    p.add_argument("old", help="model file of scvae before format 2")
    p.add_argument("new", help="the converted model file")
    p.add_argument(
        "--i-trust-this-file",
        action="store_true",
        help="required: reading the old format runs any code the file carries",
    )
    p.set_defaults(func=_cmd_convert_model)

    p = sub.add_parser("atlas-run", help="train, diagnose and score one job of the atlas")
    p.add_argument("--input", required=True, help="preprocessed .h5ad with labels")
    p.add_argument("--output", required=True, help="records .json")
    p.add_argument("--dataset", required=True)
    p.add_argument("--runs", type=_json_arg, required=True, help='{"runs": [run spec, ...]}')
    p.add_argument("--params", type=_json_arg, default={}, help="n_cells, resolution, ...")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(func=_cmd_atlas_run)

    p = sub.add_parser("atlas-report", help="atlas table, summary and figures")
    p.add_argument("--inputs", nargs="+", required=True, help="records .json of the jobs")
    p.add_argument("--table", required=True, help="atlas.tsv")
    p.add_argument("--summary", required=True, help="atlas_summary.tsv")
    p.add_argument("--remedies", default=None, help="atlas_remedies.tsv (best remedies)")
    p.add_argument("--figure-dir", required=True, help="folder for the atlas figures")
    p.set_defaults(func=_cmd_atlas_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scvae`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args.log, args.verbose)
    except OSError as err:
        where = f": {err.filename}" if err.filename and str(err.filename) != args.log else ""
        print(
            f"scvae {args.command}: error: {args.log}: cannot open the log file "
            f"({err.strerror or err}{where}); check that its folder exists or can be "
            "created (no file in the way) and is writable.",
            file=sys.stderr,
        )
        return 1
    if "SLURM_JOB_ID" in os.environ:  # which SLURM job ran this step (cluster runs)
        log.info("SLURM_JOB_ID=%s", os.environ["SLURM_JOB_ID"])
    started = time.perf_counter()
    try:
        with _sigterm_as_exception():
            args.func(args)
    except (InputError, TrainingError, ValueError, OSError, MissingExtraError) as err:
        # InputError/ValueError: bad input or settings; TrainingError: training diverged;
        # OSError (OutputError included): an output could not be written or an input
        # read; MissingExtraError: an optional dependency is not installed. The message
        # names the file, the setting or the extra to install.
        log.error("%s", err)
        print(f"scvae {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except _Terminated:
        message = (
            "stopped by SIGTERM (a scheduler's time limit or a cancelled job); no output "
            "was left half-written. Rerun the same command: training resumes from its last "
            "checkpoint."
        )
        log.error("%s", message)
        print(f"scvae {args.command}: error: {message}", file=sys.stderr)
        return 128 + signal.SIGTERM
    # For sizing scheduler requests (mem_mb, runtime) and for benchmarks/bench_workflow.py.
    log.info(
        "scvae %s done in %.1f s, peak RSS %.0f MB",
        args.command,
        time.perf_counter() - started,
        _peak_rss_mb(),
    )
    return 0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB."""
    # Linux reports kilobytes (macOS bytes; the log line is for Linux clusters).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    return max(own, children) * scale


class _Terminated(BaseException):
    """SIGTERM arrived; unwinds the stack so that temporary files are removed."""


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    # SLURM and Snakemake stop a job with SIGTERM (SIGKILL only later): unwinding lets
    # every atomic write remove its temporary file and the log say what happened.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (library messages can span several)."""
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
