"""Read single-cell count matrices from the common formats into one AnnData layout.

Every reader ends in the same place: ``X`` holds the raw integer counts as a
``scipy.sparse.csr_matrix`` of float32 (cells x genes), ``layers["counts"]`` holds a
copy of them, obs and var names are unique, ``obs["label"]`` holds the cell labels when
there are any, and ``uns["scvae"]["input"]`` records where the data came from.

Bad input raises :class:`scvae.errors.InputError` with a message that names the file
(:mod:`scvae.data.checks`). :func:`read_counts` is the entry point: it detects the format
(:func:`scvae.data.formats.detect_format`), calls that format's reader and brings the
result into this layout; h5ad files between the workflow's stages are read and written by
:mod:`scvae.data.h5ad`.
"""

from __future__ import annotations

import gzip
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

from scvae.data.checks import check_counts, corrupt_file_error, open_h5, require_exists
from scvae.data.formats import FORMATS, TEXT_SUFFIXES, detect_format
from scvae.data.h5ad import read_h5ad
from scvae.errors import InputError

__all__ = [
    "column_as_strings",
    "labels_from_column",
    "layers_hint",
    "make_names_unique",
    "read_counts",
    "require_obs_column",
    "to_csr_float32",
]

logger = logging.getLogger(__name__)

# Dense X/Y files are converted to CSR this many values at a time, so that a large
# float64 matrix is never held densely in memory as a whole.
_XY_BLOCK_VALUES = 1 << 24


# --------------------------------------------------------------------------- readers

# A reader returns the data and, optionally, advice for a non-integer-values error.
_Read = tuple[anndata.AnnData, str | None]


def _read_10x_h5(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    try:
        # scanpy signals a missing dataset with a bare Exception.
        return sc.read_10x_h5(path), None
    except OSError as err:
        raise corrupt_file_error(path, err, "a 10x Genomics HDF5 matrix") from err
    except Exception as err:
        raise InputError(
            f"{path}: not a readable Cell Ranger HDF5 matrix ({type(err).__name__}: {err})."
        ) from err


_MTX_LAYOUTS = {
    # scanpy reads Cell Ranger v3+ folders only gzipped and v2 folders only plain.
    "v3": ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"),
    "v2": ("matrix.mtx", "genes.tsv", "barcodes.tsv"),
}


def _read_10x_mtx(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    if not path.is_dir():
        raise InputError(f"{path}: format '10x_mtx' expects a folder, got a file.")
    layout = "v2" if (path / "genes.tsv").is_file() else "v3"
    missing = [name for name in _MTX_LAYOUTS[layout] if not (path / name).is_file()]
    if missing:
        raise InputError(_mtx_missing_message(path, missing))
    try:
        # make_unique=False: duplicates are made unique later, with a warning.
        return sc.read_10x_mtx(path, make_unique=False), None
    except Exception as err:
        raise InputError(
            f"{path}: could not read the 10x matrix folder ({type(err).__name__}: {err}); "
            "a file looks truncated or corrupt, or not in Cell Ranger layout (features.tsv.gz "
            "has 3 tab-separated columns: id, name, feature type)."
        ) from err


def _mtx_missing_message(path: Path, missing: list[str]) -> str:
    notes = []
    for name in missing:
        twin = name[: -len(".gz")] if name.endswith(".gz") else f"{name}.gz"
        if (path / twin).is_file():
            # scanpy reads v3 folders gzipped and v2 folders plain, nothing in between.
            notes.append(
                f"{name} ({twin} is there: {'gzip' if name.endswith('.gz') else 'gunzip'} it)"
            )
        else:
            notes.append(name)
    return (
        f"{path}: the 10x matrix folder is missing {', '.join(notes)}. A Cell Ranger "
        "folder holds matrix.mtx.gz, features.tsv.gz and barcodes.tsv.gz (v3+), or "
        "matrix.mtx, genes.tsv and barcodes.tsv uncompressed (v2)."
    )


def _read_h5ad(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    src = read_h5ad(path)
    X = _pick_layer(src, layer, path)
    # Other layers, uns and graphs refer to the source's processing, not to the counts.
    out = anndata.AnnData(X=X, obs=src.obs, var=src.var, obsm=dict(src.obsm))
    return out, None if layer else layers_hint(src.layers)


def _pick_layer(src: anndata.AnnData, layer: str | None, path: Path) -> Any:
    if layer is None:
        if src.X is None:
            raise InputError(f"{path}: has no X matrix. {layers_hint(src.layers)}")
        return src.X
    if layer not in src.layers:
        raise InputError(f"{path}: has no layer {layer!r}; {layers_hint(src.layers)}")
    return src.layers[layer]


def layers_hint(layer_names: Iterable[str]) -> str:
    """Advice naming the layers of an input file, for errors about its counts.

    Parameters
    ----------
    layer_names
        The file's layers (an AnnData's ``layers``, or its h5py group).

    Returns
    -------
    str
        ``"Layers in this file: 'counts', ... (pass layer=<name> to read one)."``
    """
    names = ", ".join(repr(k) for k in layer_names) or "none"
    return f"Layers in this file: {names} (pass layer=<name> to read one)."


def _read_loom(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    try:
        src = anndata.read_loom(path, sparse=True, cleanup=False)
    except OSError as err:
        raise corrupt_file_error(path, err, "loom") from err
    except Exception as err:
        raise InputError(
            f"{path}: could not be read as loom ({type(err).__name__}: {err})."
        ) from err
    # anndata writes the names as 'obs_names'/'var_names', loompy tools as CellID/Gene.
    _names_from_column(src.obs, ("obs_names", "cell_names"))
    _names_from_column(src.var, ("var_names", "gene_names"))
    X = _pick_layer(src, layer, path)
    out = anndata.AnnData(X=X, obs=src.obs, var=src.var, obsm=dict(src.obsm))
    return out, None if layer else layers_hint(src.layers)


def _names_from_column(df: pd.DataFrame, candidates: tuple[str, ...]) -> None:
    if not isinstance(df.index, pd.RangeIndex) and not df.index.equals(
        pd.Index([str(i) for i in range(len(df))])
    ):
        return
    for name in candidates:
        if name in df.columns:
            df.index = df.pop(name).astype(str).to_numpy()
            return


def _read_text(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    sep = _text_delimiter(path)
    # Names are read as written: pandas would turn a cell named "NA" into NaN and "001"
    # into 1.0, and rename a duplicate gene "g1" to "g1.1" without a word.
    header = _read_table(path, sep, "the file is empty", nrows=1, dtype=str)
    header_names = [str(v) for v in header.iloc[0].tolist()]
    body = _read_table(
        path, sep, "the file has a header row but no data rows", skiprows=1, dtype={0: str}
    )
    n_fields = body.shape[1]
    if len(header_names) == n_fields:
        genes = header_names[1:]  # the first field names the row-name column
    elif len(header_names) == n_fields - 1:
        genes = header_names  # as R's write.table writes it: no field above the names
    else:
        raise InputError(
            f"{path}: malformed delimited text: the header has {len(header_names)} fields "
            f"but the rows have {n_fields}. The header needs a name per column (plus, "
            "optionally, one above the row names)."
        )
    names = body.iloc[:, 0]
    df = body.iloc[:, 1:]
    df.index = pd.Index(["" if pd.isna(v) else str(v) for v in names])
    df.columns = pd.Index(genes)
    _check_table(df, path)
    X = sparse.csr_matrix(df.to_numpy())
    obs, var = pd.DataFrame(index=df.index), pd.DataFrame(index=df.columns)
    if transpose:
        X, obs, var = X.T.tocsr(), var, obs
    return anndata.AnnData(X=X, obs=obs, var=var), None


def _read_table(path: Path, sep: str, if_empty: str, **kwargs: Any) -> pd.DataFrame:
    try:
        # Only empty fields are missing; "NA" or "nan" in a count column is then
        # reported as a non-numeric value.
        return pd.read_csv(
            path, sep=sep, header=None, keep_default_na=False, na_values=[""], **kwargs
        )
    except pd.errors.ParserError as err:
        raise InputError(
            f"{path}: malformed delimited text: a row has more fields than the header "
            f"or the rows above it ({' '.join(str(err).split())}). Every row needs a name and "
            "one value per column."
        ) from err
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{path}: {if_empty}.") from err
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as err:
        raise corrupt_file_error(path, err, "delimited text") from err


def _text_delimiter(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes] or [""]
    gzipped = suffixes[-1] == ".gz"
    ext = suffixes[-2] if gzipped and len(suffixes) > 1 else suffixes[-1]
    sep = TEXT_SUFFIXES.get(ext)
    if sep is not None:
        return sep
    # .txt (or no extension with format="csv") could be either: look at the header.
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rt") as handle:
            header = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise corrupt_file_error(path, err, "delimited text") from err
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    return r"\s+"


def _check_table(df: pd.DataFrame, path: Path) -> None:
    # By position: column names may repeat (they are made unique later, with a warning).
    for j in range(df.shape[1]):
        values = df.iloc[:, j]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            continue
        bad = (pd.to_numeric(values, errors="coerce").isna() & values.notna()).to_numpy()
        i = int(bad.argmax())
        raise InputError(
            f"{path}: non-numeric value {values.iloc[i]!r} in row {df.index[i]!r}, "
            f"column {df.columns[j]!r}; the table must hold counts, with names in the header "
            "row and the first column only."
        )
    missing = df.isna().to_numpy()
    if missing.any():
        i, j = np.argwhere(missing)[0]
        raise InputError(
            f"{path}: missing value in row {df.index[i]!r}, column {df.columns[j]!r}: a "
            "row with fewer fields than the header (ragged file) or an empty cell. Every "
            "row needs a name and one value per column."
        )


def _read_xy_h5(path: Path, *, layer: str | None, transpose: bool) -> _Read:
    with open_h5(path) as f:
        if not isinstance(f.get("X"), h5py.Dataset) or f["X"].ndim != 2:
            raise InputError(f"{path}: an X/Y file needs a 2-D dataset 'X' (cells x genes).")
        try:
            X = _dense_h5_to_csr(f["X"])
            y = f["Y"][()] if isinstance(f.get("Y"), h5py.Dataset) else None
        except OSError as err:
            raise corrupt_file_error(path, err, "HDF5") from err
        except (TypeError, ValueError) as err:
            raise InputError(f"{path}: dataset 'X' is not a numeric matrix ({err}).") from err
    if transpose:
        X = X.T.tocsr()
    n_cells, n_genes = X.shape
    adata = anndata.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"cell_{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(n_genes)]),
    )
    if y is not None:
        adata.obs["label"] = _xy_labels(np.asarray(y), n_cells, path)
    return adata, None


def _dense_h5_to_csr(dataset: h5py.Dataset) -> sparse.csr_matrix:
    n_rows, n_cols = dataset.shape
    step = max(1, _XY_BLOCK_VALUES // max(1, n_cols))
    if dataset.chunks:
        # Whole chunks per block: a compressed chunk is decompressed for every read
        # that touches it, so partial-chunk blocks would decompress it many times.
        chunk_rows = dataset.chunks[0]
        step = max(1, step // chunk_rows) * chunk_rows
    blocks = [sparse.csr_matrix(dataset[i : i + step]) for i in range(0, n_rows, step)]
    if not blocks:
        return sparse.csr_matrix((n_rows, n_cols), dtype=dataset.dtype)
    return sparse.vstack(blocks, format="csr")


def _xy_labels(y: np.ndarray, n_cells: int, path: Path) -> pd.Categorical:
    y = y.reshape(-1)
    if y.size != n_cells:
        raise InputError(
            f"{path}: dataset 'Y' has {y.size} labels for {n_cells} cells; it needs one "
            "label per cell (per row of X, or per column with transpose). Check that X and "
            "Y belong together, or delete Y to read the file without labels."
        )
    if y.dtype.kind not in "iuf" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise InputError(
            f"{path}: dataset 'Y' must hold integer cell-type labels (got dtype "
            f"{y.dtype}); store the labels as integer codes, or delete Y."
        )
    codes = y.astype(np.int64)
    categories = [str(c) for c in np.unique(codes)]
    return pd.Categorical(codes.astype(str), categories=categories)


_READERS: dict[str, Callable[..., _Read]] = {
    "10x_h5": _read_10x_h5,
    "10x_mtx": _read_10x_mtx,
    "h5ad": _read_h5ad,
    "loom": _read_loom,
    "csv": _read_text,
    "xy_h5": _read_xy_h5,
}


# ---------------------------------------------------------------------- entry point


def read_counts(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    label_key: str | None = None,
    layer: str | None = None,
    transpose: bool = False,
) -> anndata.AnnData:
    """Read a raw count matrix from any supported format and check it.

    Parameters
    ----------
    path
        Input file, or a 10x Genomics matrix folder.
    format
        One of ``"10x_h5"``, ``"10x_mtx"``, ``"h5ad"``, ``"loom"``, ``"csv"``
        (delimited text: .csv, .tsv or .txt, optionally gzipped) or ``"xy_h5"``
        (datasets ``X`` and ``Y`` at the top level of an HDF5 file). Detected from the
        path and the content when None.
    label_key
        Column of the input's obs to use as cell labels; copied to ``obs["label"]``.
        X/Y files always get their ``Y`` labels there.
    layer
        For h5ad and loom inputs: the layer that holds the raw counts, when ``X``
        holds normalized values.
    transpose
        For text and X/Y inputs: the matrix is genes x cells instead of cells x genes.

    Returns
    -------
    anndata.AnnData
        ``X`` is the raw counts as a float32 CSR matrix (values within float rounding
        of an integer rounded, with a warning), ``layers["counts"]`` a copy of it,
        names are unique and ``uns["scvae"]["input"]`` records path and format.
        Of an h5ad or loom input only obs, var and obsm are kept; of a 10x input
        only the "Gene Expression" features, named by gene symbol.

    Raises
    ------
    InputError
        If the input is missing, unreadable, of an unknown format, or does not hold
        raw counts.
    """
    path = Path(path)
    require_exists(path)
    fmt = detect_format(path) if format is None else _check_format_arg(format, path)
    _check_options(path, fmt, layer=layer, transpose=transpose)
    with warnings.catch_warnings():
        # Duplicate names get one warning below that names the file and the count;
        # anndata's generic ones would only repeat it.
        warnings.filterwarnings("ignore", message=r".* names are not unique")
        warnings.filterwarnings("ignore", category=anndata.ImplicitModificationWarning)
        adata, hint = _READERS[fmt](path, layer=layer, transpose=transpose)
    # Checked before the float32 cast, which would round some values unseen; rounded in
    # place, as the matrix was just read.
    X = check_counts(
        adata.X,
        source=str(path),
        hint=hint,
        obs_names=adata.obs_names,
        var_names=adata.var_names,
        copy=False,
    )
    adata.X = to_csr_float32(X)
    # A copy, not the same object: scanpy calls that normalize X in place must not
    # change the counts layer.
    adata.layers["counts"] = adata.X.copy()
    make_names_unique(adata, path)
    if label_key is not None:
        adata.obs["label"] = labels_from_column(adata.obs, label_key, path)
    adata.uns["scvae"] = {"input": {"path": str(path), "format": fmt}}
    logger.info("Read %d cells x %d genes from %s (%s)", *adata.shape, path, fmt)
    return adata


def _check_format_arg(fmt: str, path: Path) -> str:
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if path.is_dir() and fmt != "10x_mtx":
        raise InputError(f"{path}: is a folder; only format '10x_mtx' reads a folder.")
    return fmt


def _check_options(path: Path, fmt: str, *, layer: str | None, transpose: bool) -> None:
    if layer is not None and fmt not in ("h5ad", "loom"):
        raise InputError(f"{path}: layer= applies to h5ad and loom inputs, not {fmt}.")
    if transpose and fmt not in ("csv", "xy_h5"):
        raise InputError(
            f"{path}: transpose= applies to text and X/Y inputs; {fmt} files have a fixed "
            "orientation."
        )


# ------------------------------------------------------------- the common layout


def to_csr_float32(X: Any) -> sparse.csr_matrix:
    """Counts as every reader returns them: float32 CSR, no duplicate entries or zeros.

    Parameters
    ----------
    X
        A cells x genes matrix (sparse or dense).

    Returns
    -------
    scipy.sparse.csr_matrix
        The counts; an input that already is a float32 CSR matrix shares its arrays
        with the result, and is tidied in place with it.
    """
    X = sparse.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    X.eliminate_zeros()
    return X


def make_names_unique(adata: anndata.AnnData, path: Path) -> None:
    """Make obs and var names unique in place, with one warning per axis that names ``path``.

    Parameters
    ----------
    adata
        Data just read from ``path``.
    path
        The input file, named in the warning.
    """
    for axis, what in (("obs", "cell"), ("var", "gene")):
        names = getattr(adata, f"{axis}_names")
        n_dup = len(names) - names.nunique()
        if not n_dup:
            continue
        getattr(adata, f"{axis}_names_make_unique")()
        msg = f"{path}: {n_dup} duplicate {what} name(s) made unique by appending '-1', '-2', ..."
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)


def labels_from_column(obs: pd.DataFrame, label_key: str, path: Path) -> pd.Categorical:
    """Cell labels from an obs column, as strings; whole numbers as ``"1"``, not ``"1.0"``.

    Parameters
    ----------
    obs
        The input's obs.
    label_key
        The column holding the labels.
    path
        The input file, named in the error.

    Returns
    -------
    pandas.Categorical
        One label per cell (missing values stay missing).

    Raises
    ------
    InputError
        If ``label_key`` is not a column of ``obs``.
    """
    require_obs_column(obs, label_key, path, what="label_key")
    return column_as_strings(obs[label_key])


def require_obs_column(obs: pd.DataFrame, key: str, path: Path | str, *, what: str) -> None:
    """Raise a clear error, naming the columns there are, when ``key`` is not in ``obs``.

    Parameters
    ----------
    obs
        The input's obs.
    key
        The column asked for.
    path
        The input file, named in the error.
    what
        The setting that named the column (``"label_key"``, ``"batch_key"``, ...).

    Raises
    ------
    InputError
        If ``key`` is not a column of ``obs``.
    """
    if key not in obs.columns:
        available = ", ".join(repr(c) for c in obs.columns) or "none"
        raise InputError(
            f"{path}: {what} {key!r} is not an obs column; available columns: {available}."
        )


def column_as_strings(values: pd.Series) -> pd.Categorical:
    """An obs column as categorical strings; whole numbers as ``"1"``, not ``"1.0"``.

    Parameters
    ----------
    values
        The column.

    Returns
    -------
    pandas.Categorical
        One string per cell (missing values stay missing), the categories sorted.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        # Convert the categories, not every cell: fast on an atlas's obs.
        names = np.asarray(column_as_strings(pd.Series(values.cat.categories)), dtype=object)
        codes = values.cat.codes.to_numpy()
        strings = np.where(codes >= 0, names[np.maximum(codes, 0)] if names.size else None, None)
        return pd.Categorical(strings)
    known = values.dropna()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = known.to_numpy(dtype=float)
        if np.all(numbers == np.round(numbers)):
            # 1.0 -> "1", as for X/Y labels, so that labels compare across inputs.
            categories = [str(v) for v in np.unique(numbers.astype(np.int64))]
            strings = [None if pd.isna(v) else str(int(v)) for v in values]
            return pd.Categorical(strings, categories=categories)
    strings = [None if pd.isna(v) else str(v) for v in values]
    return pd.Categorical(strings)
