"""Write files under a temporary name and rename them when complete."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scvae.errors import OutputError

_ADVICE = {
    errno.ENOSPC: "free disk space there or write the results elsewhere, then rerun",
    errno.EDQUOT: "free space within your disk quota or write the results elsewhere, then rerun",
    errno.EACCES: "make the folder writable for this user or write the results elsewhere",
    errno.EPERM: "make the folder writable for this user or write the results elsewhere",
    errno.EROFS: "the file system is read-only: write the results elsewhere",
    errno.ENOTDIR: "a file is in the way of the folder: move it or write the results elsewhere",
    errno.EEXIST: "a file is in the way of the folder: move it or write the results elsewhere",
}


def temp_pattern(path: str | os.PathLike) -> str:
    """Glob pattern, relative to the folder of ``path``, of its temporary files.

    A writer killed by SIGKILL cannot remove its temporary file; such leftovers are
    hidden (leading dot) and end in ``.tmp<suffix>``, so nothing takes them for a
    result, and the owner of ``path`` can remove them with this pattern.
    """
    path = Path(path)
    return f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` left by a writer that was killed.

    Only for paths that one process owns (a training job's outputs and checkpoint):
    the temporary file of a concurrent writer of the same path would go too.

    Returns
    -------
    list of Path
        The files removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    removed = []
    for stale in path.parent.glob(temp_pattern(path)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


def output_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """An :class:`~scvae.errors.OutputError` naming ``path``, the cause and what to do."""
    path = Path(path)
    reason = err.strerror or str(err)
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    advice = _ADVICE.get(err.errno, "check free space and write permission there")
    return OutputError(
        f"{path}: could not write the output: {reason}{where}; {advice}. Nothing was "
        "written under that name.",
        err.errno,
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    A crash, a full disk or a kill while writing leaves no partial file under the
    final name: the temporary file is removed on error and an existing file at
    ``path`` stays as it was. An :class:`OSError` while writing (full disk, no
    permission, a file where the folder should be) becomes an
    :class:`~scvae.errors.OutputError` whose message names ``path``.

    Parameters
    ----------
    path
        Final destination.

    Yields
    ------
    Path
        Where the caller writes. It has the same suffix as ``path`` so that writers
        that dispatch on the extension (matplotlib, anndata) behave the same.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
        )
        os.close(fd)
    except OSError as err:
        raise output_error(path, err) from err
    tmp_path = Path(tmp)
    # mkstemp creates the file readable by its owner only; give it the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise output_error(path, exc) from exc
        raise


def _fsync(path: Path) -> None:
    # On disk before the rename, so that a crash of the machine cannot leave an empty
    # or partial file under the final name either.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
