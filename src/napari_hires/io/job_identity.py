"""What makes a rerun "the same job": the content of its input, identified cheaply but surely, and the words that
say how a recorded job differs from a new one.

:func:`content_identity` describes the pixels an array will deliver without reading them all:

- a zarr array on local disk (an OME-Zarr level as napari-hires reads it, a bare ``zarr.Array``, or any dask array
  built over them): a digest of the metadata documents on the way from the store's root to the array (root
  group, intermediate groups, the array's own ``zarr.json`` / ``.zarray`` / ``.zattrs``), the array's chunk
  listing (count, total bytes, newest mtime_ns and a digest of every name, size and mtime_ns) and digests of the
  bytes of a few chunk files sampled evenly from the listing. Rewriting any chunk changes its mtime (and almost
  surely its size); the samples catch a copy that kept times and sizes. Costs one ``stat`` per chunk file and a
  few small reads: no pixel is decoded. For a dask array, the names of its graph's layers (tokens dropped) are
  recorded too, so a computation on top of the files (e.g. ``level * 2``) is not mistaken for the files;
- a single file (TIFF, PNG, JPEG; the Pyramid's ``source``): its size, mtime_ns and digests of its first and last
  MiB;
- a numpy array: a digest of its bytes when they are at most 64 MiB, else of 256 evenly spaced 64 KiB windows of
  them (a change elsewhere in a larger in-memory array goes unnoticed: write such inputs to a store to be sure);
- any other dask array: its name, which dask derives from the graph's inputs for deterministic constructions (the
  synthetic slide names its graphs by size, seed and variant): arrays with random names never match, so a run on
  them never resumes (safe, not wrong);
- anything else: a random token (never resumed).

:func:`describe_difference` turns two run records into one line naming the differing fields with both values.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

#: Chunk files read whole for the sample digest, and the bytes read from each end of a single file.
SAMPLED_CHUNKS = 4
FILE_ENDS = 1 << 20
_ARRAY_WHOLE = 64 << 20
_ARRAY_WINDOWS, _ARRAY_WINDOW = 256, 64 << 10
_METADATA = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_TOKEN = re.compile(r"-[0-9a-f]{32}$")
#: The run record's field that holds :func:`content_identity`.
CONTENT = "content"


def content_identity(array: Any, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A JSON-able description of the pixels ``array`` delivers (``path``: the file or store it was read from)."""
    if path is not None and os.path.isfile(path):
        return _file_identity(Path(path))
    import dask.array as da

    stored = [_zarr_identity(a) for a in _zarr_arrays(array)]
    if stored and all(s is not None for s in stored):
        ops = _layer_names(array) if isinstance(array, da.Array) else []
        return {"kind": "zarr", "arrays": stored, "ops": ops}
    if isinstance(array, np.ndarray):
        return _numpy_identity(array)
    if isinstance(array, da.Array):
        return {"kind": "dask", "name": array.name}
    return {"kind": "unknown", "type": type(array).__name__, "token": uuid.uuid4().hex}


def describe_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """One line: what about the job in ``new`` differs from the recorded ``old`` (both run records)."""
    old = old or {}
    keys = [k for k in sorted(set(old) | set(new)) if k != CONTENT and old.get(k) != new.get(k)]
    parts = []
    if keys:
        begun = ", ".join(f"{k}={_show(old.get(k))}" for k in keys)
        now = ", ".join(f"{k}={_show(new.get(k))}" for k in keys)
        parts.append(f"this store was begun with {begun}; this run has {now}")
    if old.get(CONTENT) != new.get(CONTENT):
        parts.append("the input changed since this store was begun: " + describe_change(old.get(CONTENT), new.get(CONTENT)))
    return "; ".join(parts)


def describe_change(old: dict[str, Any] | None, new: dict[str, Any] | None) -> str:
    """What differs between two content identities, in words (which files, how)."""
    if not old:
        return "the store's record does not identify its input's content (begun by an older napari-hires)"
    new = new or {}
    kind = old.get("kind")
    if kind != new.get("kind"):
        return f"it was {_kind(old)} and is now {_kind(new)}"
    if kind == "file":
        return (f"the file {old['path']} differs ({_stat_words(old)} then; now {_stat_words(new)})"
                if (old["size"], old["mtime_ns"]) != (new["size"], new["mtime_ns"])
                else f"the file {old['path']} holds other bytes (same size and modification time)")
    if kind == "zarr":
        if len(old["arrays"]) != len(new["arrays"]) or old["ops"] != new["ops"]:
            return f"it is computed differently from its files (dask layers {old['ops']} then, {new['ops']} now)"
        for a, b in zip(old["arrays"], new["arrays"]):
            if a["dir"] != b["dir"]:
                return f"it was read from {a['dir']} and is now read from {b['dir']}"
            if a["metadata"] != b["metadata"]:
                return f"the zarr metadata of {a['dir']} (or of the groups above it) changed"
            if a["chunks"] != b["chunks"]:
                return (f"chunk files of {a['dir']} differ ({_listing_words(a['chunks'])} then; now "
                        f"{_listing_words(b['chunks'])})")
            if a["samples"] != b["samples"]:
                return f"sampled chunk files of {a['dir']} hold other bytes (same names, sizes and times)"
        return "its files differ"
    if kind == "array":
        return f"the array's pixels differ (shape {tuple(new.get('shape', ()))}, {new.get('dtype')})"
    if kind == "dask":
        return (f"the dask array is {new.get('name')} now, {old.get('name')} then (a dask array whose name is "
                "random is never the same input twice)")
    return f"{_kind(old)} cannot be identified, so a store begun from it cannot be resumed"


# ---------------------------------------------------------------------------------------------------- kinds


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    with path.open("rb") as file:
        head = hashlib.sha1(file.read(FILE_ENDS)).hexdigest()
        file.seek(max(0, st.st_size - FILE_ENDS))
        tail = hashlib.sha1(file.read(FILE_ENDS)).hexdigest()
    return {"kind": "file", "path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head": head, "tail": tail}


def _numpy_identity(array: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    h = hashlib.sha1()
    if data.size <= _ARRAY_WHOLE:
        h.update(data)
    else:
        for start in np.linspace(0, data.size - _ARRAY_WINDOW, _ARRAY_WINDOWS).astype(np.int64):
            h.update(data[start:start + _ARRAY_WINDOW])
    return {"kind": "array", "shape": list(array.shape), "dtype": str(array.dtype), "digest": h.hexdigest()}


def _zarr_arrays(array: Any) -> list[Any]:
    """The zarr arrays a (dask) array reads: itself, or those held by its graph's ``original-*`` layers (where
    ``dask.array.from_array`` keeps its source, e.g. napari-hires's reader wrappers)."""
    import dask.array as da
    import zarr

    def unwrap(obj: Any) -> Any:
        return getattr(obj, "array", None) if not isinstance(obj, zarr.Array) else obj

    if isinstance(array, zarr.Array):
        return [array]
    if not isinstance(array, da.Array):
        return []
    found = []
    for name, layer in array.dask.layers.items():
        if name.startswith("original-") and len(layer) == 1:
            obj = unwrap(next(iter(layer.values())))
            if isinstance(obj, zarr.Array):
                found.append(obj)
            else:
                return []  # a source that is not a zarr array: identified by the dask name instead
    return found


def _zarr_identity(array: Any) -> dict[str, Any] | None:
    """Metadata digest, chunk listing and sampled chunk digests of a zarr array in a local directory store."""
    root = getattr(array.store, "root", None)
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root).resolve()
    folder = root / array.path if array.path else root
    meta = hashlib.sha1()
    node = root
    for part in ["", *(array.path.split("/") if array.path else [])]:
        node = node / part if part else node
        for name in _METADATA:
            file = node / name
            if file.is_file():
                meta.update(name.encode() + b"\0" + file.read_bytes())
    files = _chunk_files(folder)
    listing = hashlib.sha1("\n".join(f"{rel}\0{size}\0{mtime}" for rel, size, mtime in files).encode())
    samples = hashlib.sha1()
    if files:
        for i in sorted({round(k * (len(files) - 1) / max(1, SAMPLED_CHUNKS - 1)) for k in range(SAMPLED_CHUNKS)}):
            samples.update((folder / files[i][0]).read_bytes())
    chunks = {"count": len(files), "bytes": sum(f[1] for f in files),
              "newest_ns": max((f[2] for f in files), default=0), "listing": listing.hexdigest()}
    return {"dir": str(folder), "metadata": meta.hexdigest(), "chunks": chunks, "samples": samples.hexdigest()}


def _chunk_files(folder: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under an array's folder but its metadata, sorted by path: one
    ``stat`` per file, the listing's whole cost (about 0.4 s for 65,536 chunks on a small VM)."""
    out = []
    top = os.fspath(folder)
    cut = len(top) + 1
    stack = [top]
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                elif here != top or entry.name not in _METADATA:
                    st = entry.stat()
                    out.append((entry.path[cut:], st.st_size, st.st_mtime_ns))
    out.sort()
    return out


def _layer_names(array: Any) -> list[str]:
    """The graph's layer names without their tokens, in the graph's order: what is computed, not from what."""
    return [_TOKEN.sub("", name) for name in array.dask.layers]


# ---------------------------------------------------------------------------------------------------- words


def _kind(identity: dict[str, Any]) -> str:
    kind = identity.get("kind")
    return {"file": f"the file {identity.get('path')}", "zarr": "a zarr store", "array": "an in-memory array",
            "dask": "a dask array"}.get(kind, f"a {identity.get('type', 'input')} napari-hires cannot identify")


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).isoformat(sep=" ", timespec="seconds")


def _stat_words(identity: dict[str, Any]) -> str:
    return f"{identity.get('size')} bytes, modified {_when(identity.get('mtime_ns', 0))}"


def _listing_words(chunks: dict[str, Any]) -> str:
    return f"{chunks['count']} files, {chunks['bytes']} bytes, newest modified {_when(chunks['newest_ns'])}"


def _show(value: Any) -> str:
    """A record value as the user gave it: lists (JSON's tuples) as tuples."""
    if isinstance(value, list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return json.dumps(value) if isinstance(value, str) else str(value)
