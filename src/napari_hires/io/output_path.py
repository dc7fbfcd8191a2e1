"""Where a writer may put its output: never over, around or inside one of its inputs, never over data napari-hires
did not write (not even with ``overwrite``), and only where it can write.

Every writer (predict, pyramid, synth, export, train and the widgets that call them) checks its output here before
any work, so a mistyped path costs a one-line error instead of the user's data or an hour of computing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from napari_hires.errors import WRITE_ERRORS, HiresError, OutputExistsError
from napari_hires.io.build_state import MARKER, is_zarr, store_marker


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs`` (paths; None is skipped), symlinks
    resolved: no writer, with or without ``overwrite``, may touch what it reads."""
    dst = Path(out).expanduser().resolve()
    for item in inputs:
        if item is None:
            continue
        src = Path(item).expanduser().resolve()
        if src == dst:
            how = "is"
        elif dst in src.parents:
            how = "contains"
        elif src in dst.parents:
            how = "lies inside"
        else:
            continue
        raise HiresError(f"the output {out} {how} its own input {item}; napari-hires never writes over its input, "
                         "even with --overwrite: choose another output path")


def check_writable(out: str | os.PathLike) -> None:
    """Fail now, before any work, when the folder that will hold ``out`` cannot be written to (a probe file is
    created and removed there: permissions alone do not tell for root, read-only mounts or full quotas)."""
    folder = Path(out).expanduser().absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the writer creates the missing folders here
    if not folder.is_dir():
        raise HiresError(f"{folder} is not a folder; choose an output path inside a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-hires-probe-", dir=folder)
    except OSError as err:
        what, todo = WRITE_ERRORS.get(err.errno, (err.strerror or str(err), "choose another output"))
        raise HiresError(f"cannot write {out}: {what} ({folder}); {todo}") from None
    os.close(fd)
    os.unlink(probe)


def written_by_napari_hires(path: str | os.PathLike) -> bool:
    """True for a zarr store whose root metadata carries napari-hires's marker (every store it writes does)."""
    return store_marker(path) is not None


def check_replaceable(out: str | os.PathLike, overwrite: bool, *, folder: bool = True) -> None:
    """Refuse an existing output unless ``overwrite``, and then anything but an empty folder or a store that
    napari-hires wrote (its marker is in the root metadata), or (``folder`` False) a file: ``overwrite`` never
    replaces data that napari-hires did not create."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.is_symlink() or out.is_dir() != folder:
        raise OutputExistsError(f"{out} exists and is not a {'directory' if folder else 'file'}; refusing to replace "
                                "it, choose another output path")
    if not folder or not any(out.iterdir()):
        return
    if not is_zarr(out):
        raise OutputExistsError(f"{out} is a non-empty directory but not a zarr store; refusing to delete it, "
                                "choose another output path")
    if not written_by_napari_hires(out):
        raise OutputExistsError(f"{out} is a zarr store that napari-hires did not write (no {MARKER!r} marker in its "
                                "root metadata); refusing to delete it even with --overwrite: remove it yourself or "
                                "choose another output path")


def prepare_output(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an existing output unless it may be replaced (:func:`check_replaceable`), then delete it."""
    out = Path(out)
    check_replaceable(out, overwrite)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        shutil.rmtree(out)
