"""Zarr reading: OME-Zarr 0.4 (zarr v2) and 0.5 (zarr v3) images and labels, plain zarr arrays and groups of levels."""

from __future__ import annotations

import itertools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.errors import NodeNotFoundError
from zarr.storage import LocalStore

from napari_hires.errors import HiresWarning, ImageReadError
from napari_hires.io.build_state import is_incomplete
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import guess_axes, image_contrast, lazy_level

_META_FILES = ("zarr.json", ".zattrs", ".zarray", ".zgroup")
_AXIS_BY_TYPE = {"time": "t", "channel": "c"}
_NO_NODE = "holds no zarr array or group. Check the path, or write the store again."


class _Root:
    """A zarr store opened read-only, with the name used in messages and (for local stores) its directory."""

    def __init__(self, target: Path | Store) -> None:
        if isinstance(target, Path):
            self.store: Store = LocalStore(target, read_only=True)
            self.dir: Path | None = target
            self.source = str(target)
        else:
            self.store = target
            root = getattr(target, "root", None)
            self.dir = Path(root) if root is not None else None
            self.source = str(root) if root is not None else repr(target)

    def where(self, path: str) -> str:
        return f"{self.source}/{path}" if path else self.source

    def open(self, path: str = "", missing: str | None = _NO_NODE) -> zarr.Array | zarr.Group | None:
        """The node at path; broken metadata becomes ImageReadError naming the file, and so does a missing node
        (with the ``missing`` text after its location), unless ``missing`` is None: then None is returned."""
        try:
            return zarr.open(store=self.store, path=path, mode="r")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ImageReadError(
                f"{self._bad_json(path)}: the zarr metadata is not valid JSON ({err}). "
                "Restore the file from a copy or write the store again."
            ) from err
        except (NodeNotFoundError, FileNotFoundError, KeyError) as err:
            if missing is None:
                return None
            raise ImageReadError(f"{self.where(path)} {missing}") from err
        except (ValueError, TypeError) as err:
            raise ImageReadError(
                f"{self.where(path)}: invalid zarr metadata ({err}). Restore it from a copy or write the store again."
            ) from err

    def _bad_json(self, path: str) -> str:
        """The metadata file of node path that fails to parse (local stores), else the node's location."""
        if self.dir is not None:
            for name in _META_FILES:
                file = self.dir / path / name
                try:
                    if file.is_file():
                        json.loads(file.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError):
                    return str(file)
        return self.where(path)


def _ome_attrs(node: zarr.Group | zarr.Array) -> dict[str, Any]:
    """NGFF attributes: under "ome" in zarr v3 (0.5), at the top level in zarr v2 (0.4)."""
    attrs = node.attrs.asdict()
    return attrs.get("ome", attrs) if node.metadata.zarr_format == 3 else attrs


def _resolve(target: Path | Store) -> tuple[_Root, str, zarr.Array | zarr.Group]:
    """Open the root node, stepping into the image of a bioformats2raw wrapper."""
    root = _Root(target)
    node = root.open("")
    if isinstance(node, zarr.Group):
        attrs = _ome_attrs(node)
        if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
            return root, "0", root.open("0")
    return root, "", node


def open_zarr(target: Path | Store) -> Pyramid:
    """A zarr store as a Pyramid: OME-Zarr multiscales, a group of levels "0", "1", ... or a single array."""
    root, path, node = _resolve(target)
    name = _stem(root) if isinstance(target, Path) else "image"
    if isinstance(node, zarr.Array):
        return _plain([node], [path], root, name, root.where(path))
    if is_incomplete(node.attrs.asdict()):
        raise ImageReadError(
            f"{root.where(path)} is an incomplete napari-hires build (its writer was interrupted before the "
            "multiscales metadata was written); run the command that made it again with --overwrite"
        )
    attrs = _ome_attrs(node)
    if "multiscales" in attrs:
        return _multiscale(root, path, attrs, name=name, kind="labels" if "image-label" in attrs else "image")
    return _plain_group(root, path, node, name)


def open_zarr_labels(target: Path | Store) -> dict[str, Pyramid]:
    """The label images listed in the ``labels`` group of an OME-Zarr image, name -> Pyramid(kind="labels")."""
    root, path, node = _resolve(target)
    if not isinstance(node, zarr.Group) or "multiscales" not in _ome_attrs(node):
        return {}
    labels_path = _join(path, "labels")
    labels_group = root.open(labels_path, missing=None)
    if not isinstance(labels_group, zarr.Group):
        return {}
    names = _ome_attrs(labels_group).get("labels", [])
    result: dict[str, Pyramid] = {}
    for label in names:
        label_path = _join(labels_path, str(label))
        group = root.open(label_path, missing="is listed in labels but missing. Remove it from the list or write it.")
        attrs = _ome_attrs(group) if isinstance(group, zarr.Group) else {}
        if "multiscales" not in attrs:
            raise ImageReadError(
                f"{root.where(label_path)} is listed in labels but is not a multiscale label image. "
                "Remove it from the labels list or write it again."
            )
        result[str(label)] = _multiscale(root, label_path, attrs, name=str(label), kind="labels")
    return result


# ---------------------------------------------------------------------------------------------- OME-Zarr
_MISSING_LEVEL = (
    "is listed in multiscales but missing. Copy the store again or write the missing level "
    "(e.g. with `napari-hires pyramid`)."
)


def _multiscale(root: _Root, path: str, attrs: dict, *, name: str, kind: str) -> Pyramid:
    """Check the multiscales metadata ourselves (clear messages), validate it with ome-zarr-models, build levels."""
    where = root.where(path)
    multiscales = attrs["multiscales"]
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise ImageReadError(f"{where}: 'multiscales' must be a non-empty list of objects. Write the metadata again.")
    ms = multiscales[0]
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) and "path" in d for d in datasets):
        raise ImageReadError(f"{where}: multiscales has no 'datasets' with paths. Write the metadata again.")
    level_paths = [_join(path, str(d["path"])) for d in datasets]
    arrays = []
    for level_path in level_paths:
        arr = root.open(level_path, missing=_MISSING_LEVEL)
        if not isinstance(arr, zarr.Array):
            raise ImageReadError(f"{root.where(level_path)} is listed in multiscales but is a group, not an array.")
        arrays.append(arr)
    axes = _ngff_axes(ms, arrays[0], where)
    _check_levels(arrays, axes, where)
    _validate(attrs, kind, where)
    if root.dir is not None and where not in _checked_chunks:
        _checked_chunks.add(where)
        _warn_missing_chunks(root.dir, level_paths, arrays, axes, where)

    levels = [lazy_level(a, root.where(p), chunk_files=True) for a, p in zip(arrays, level_paths)]
    scale, translation = _transform(ms, datasets[0], len(axes))
    raw_axes = ms.get("axes") or []
    units = {axes[i]: str(a["unit"]) for i, a in enumerate(raw_axes) if isinstance(a, dict) and a.get("unit")}
    common = dict(scale=tuple(scale), translation=tuple(translation), name=name, units=units, source=where)
    if kind == "labels":
        levels, axes, scale, translation = _drop_label_channel(levels, axes, scale, translation, where)
        colors, names = _label_classes(attrs.get("image-label", {}))
        common.update(scale=tuple(scale), translation=tuple(translation))
        return Pyramid(levels=levels, axes=axes, kind="labels", class_colors=colors, class_names=names, **common)
    channel_names, windows = _omero(attrs.get("omero"), levels[0].shape[axes.index("c")] if "c" in axes else 1)
    if _is_rgb(attrs.get("omero"), levels[0], axes):
        # napari shows uint8 red/green/blue channels as one RGB layer; move c last (lazily) as napari wants it
        order = [i for i, a in enumerate(axes) if a != "c"] + [axes.index("c")]
        levels = [lv.transpose(order) for lv in levels]
        common.update(scale=tuple(scale[i] for i in order), translation=tuple(translation[i] for i in order))
        return Pyramid(levels=levels, axes="".join(axes[i] for i in order), channel_names=channel_names,
                       contrast_limits=None, **common)
    return Pyramid(
        levels=levels,
        axes=axes,
        channel_names=channel_names if "c" in axes else None,
        contrast_limits=image_contrast(levels, axes, windows),
        **common,
    )


def _ngff_axes(ms: dict, first: zarr.Array, where: str) -> str:
    """Axis letters from NGFF axes (names t/c/z/y/x, else by type); guessed for pre-0.3 metadata without axes."""
    raw = ms.get("axes")
    if raw is None:
        return guess_axes(first.shape)
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in raw]
    types = [a.get("type") if isinstance(a, dict) else None for a in raw]
    letters = [n.lower() if len(n) == 1 else "" for n in names]
    if not (set(letters) <= set("tczyx") and len(set(letters)) == len(letters) and "" not in letters):
        spatial = [i for i, t in enumerate(types) if t == "space"]
        letters = [_AXIS_BY_TYPE.get(t or "", "") for t in types]
        for i, letter in zip(spatial, "zyx"[-len(spatial):] if 0 < len(spatial) <= 3 else ""):
            letters[i] = letter
        if "" in letters or len(set(letters)) != len(letters):
            raise ImageReadError(
                f"{where}: cannot map the axes {names} to t/c/z/y/x. Name the axes t, c, z, y, x in the metadata."
            )
    if len(letters) != first.ndim:
        raise ImageReadError(
            f"{where}: multiscales lists {len(letters)} axes but level 0 has {first.ndim} dimensions "
            f"(shape {first.shape}). Fix the axes metadata."
        )
    return "".join(letters)


def _check_levels(arrays: list[zarr.Array], axes: str, where: str) -> None:
    """All levels share the number of dimensions, and y/x sizes never grow from one level to the next."""
    iy, ix = axes.index("y"), axes.index("x")
    for i, (fine, coarse) in enumerate(zip(arrays, arrays[1:]), start=1):
        if coarse.ndim != fine.ndim:
            raise ImageReadError(f"{where}: level {i} has {coarse.ndim} dimensions, level 0 has {arrays[0].ndim}.")
        if coarse.shape[iy] > fine.shape[iy] or coarse.shape[ix] > fine.shape[ix]:
            raise ImageReadError(
                f"{where}: level {i} (shape {coarse.shape}) is larger than level {i - 1} (shape {fine.shape}); "
                "multiscales datasets must go from finest to coarsest."
            )


def _validate(attrs: dict, kind: str, where: str) -> None:
    """Validate a node's own 0.4/0.5 metadata with ome-zarr-models; other versions are not checked.

    Only the node's attributes are validated: arrays were checked above with clearer messages, and a sibling
    ``labels`` group with a small flaw (e.g. ome-zarr-py 0.18 omits its 0.5 ``version``) must not hide the image.
    """
    version = str(attrs.get("version") or attrs["multiscales"][0].get("version", ""))
    if version not in ("0.4", "0.5"):
        return
    import pydantic

    if version == "0.4":
        from ome_zarr_models.v04.image import ImageAttrs
        from ome_zarr_models.v04.image_label import ImageLabelAttrs
    else:
        from ome_zarr_models.v05.image import ImageAttrs
        from ome_zarr_models.v05.image_label import ImageLabelAttrs
    model = ImageLabelAttrs if kind == "labels" and "image-label" in attrs else ImageAttrs
    try:
        model.model_validate(attrs)
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in err.errors()[:3]
        )
        raise ImageReadError(
            f"{where}: the metadata does not follow OME-NGFF {version}: {problems}. "
            "Fix the metadata or write the image again (e.g. with `napari-hires pyramid`)."
        ) from err


class MissingChunksWarning(HiresWarning):
    """Chunk files of a local store are gone where its other levels show data: those pixels read as the fill value."""


#: Multiscale groups already checked for missing chunks in this process (each is checked, and warned about, once).
_checked_chunks: set[str] = set()
#: Absent chunks per group checked by a read of the neighbouring level (a deleted chunk or one zarr left out as all
#: fill value?); the rest are not reported.
_VERIFY_AT_MOST = 32


def _warn_missing_chunks(base: Path, level_paths: list[str], arrays: list[zarr.Array], axes: str, where: str) -> None:
    """Warn if chunk (or shard) files of a local store are missing where the next level holds data.

    zarr stores no chunk that is all fill value, so an absent file alone proves nothing. A missing chunk is reported
    when the level next to it (coarser, or finer for the coarsest) is not all fill value in the same place: it had
    data when the pyramid was built. So sparse stores (a prediction restricted to a region or mask, labels with empty
    background) do not warn. A level whose file count is complete costs one directory scan and nothing else (about
    20 ms for the 5,500 files of a 32768^2 store in 512-px chunks); at most _VERIFY_AT_MOST absent chunks are
    checked by a read. Single-level stores, inner chunks of shards and remote stores are not checked.
    """
    if len(arrays) < 2:
        return
    found = []
    budget = _VERIFY_AT_MOST
    for k, (arr, level_path) in enumerate(zip(arrays, level_paths)):
        grid = _storage_grid(arr)
        present = _chunk_files(base / level_path)
        if len(present) >= math.prod(grid) or budget == 0:
            continue
        absent = [i for i in itertools.product(*map(range, grid)) if arr.metadata.encode_chunk_key(i) not in present]
        neighbour = arrays[k + 1] if k + 1 < len(arrays) else arrays[k - 1]
        missing = sum(_had_data(arr, index, neighbour, axes) for index in absent[:budget])
        budget -= min(budget, len(absent))
        if missing:
            found.append(f"level {level_path.rsplit('/', 1)[-1]}: {missing} of {math.prod(grid)} chunks")
    if found:
        warnings.warn(
            f"{where}: chunk files are missing ({'; '.join(found)}); those pixels read as the fill value (black). "
            "The store was copied or written incompletely: copy it again or rewrite it.",
            MissingChunksWarning,
            stacklevel=4,
        )


def _storage_grid(arr: zarr.Array) -> tuple[int, ...]:
    """Number of stored objects (shards, or chunks if unsharded) along each dimension."""
    return tuple(-(-n // c) for n, c in zip(arr.shape, arr.shards or arr.chunks))


def _chunk_files(folder: Path | str, prefix: str = "") -> set[str]:
    """Keys (relative paths with "/") of the files under a level's directory, metadata excepted."""
    keys: set[str] = set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    keys |= _chunk_files(entry.path, f"{prefix}{entry.name}/")
                elif entry.name not in _META_FILES:
                    keys.add(prefix + entry.name)
    except FileNotFoundError:
        pass
    return keys


def _had_data(arr: zarr.Array, index: tuple[int, ...], neighbour: zarr.Array, axes: str) -> bool:
    """True when the region of absent chunk ``index`` is not all fill value in ``neighbour`` (a border pixel is left
    out, as smoothing downsamplers blur across chunk edges)."""
    region = []
    for axis, i, c, n, m in zip(axes, index, arr.shards or arr.chunks, arr.shape, neighbour.shape):
        start, stop = i * c * m / n, min((i + 1) * c, n) * m / n
        if axis in "yx":
            start, stop = math.floor(start) + 1, math.ceil(stop) - 1
        region.append(slice(int(start), max(int(start) + 1, int(math.ceil(stop)))))
    values = np.asarray(neighbour[tuple(region)])
    fill = arr.fill_value
    if values.dtype.kind == "f" and np.isnan(fill):
        return bool((~np.isnan(values)).any())
    return bool((values != fill).any())


def _transform(ms: dict, dataset: dict, ndim: int) -> tuple[list[float], list[float]]:
    """Level-0 scale and translation, with the multiscale-wide transform applied after the dataset's."""
    scale, translation = [1.0] * ndim, [0.0] * ndim
    for transforms in (dataset.get("coordinateTransformations"), ms.get("coordinateTransformations")):
        for t in transforms or []:
            values = t.get(t.get("type"))
            if not isinstance(values, list) or len(values) != ndim:
                continue  # identity, or a transform stored in a file: no change
            if t["type"] == "scale":
                scale = [s * float(f) for s, f in zip(scale, values)]
                translation = [v * float(f) for v, f in zip(translation, values)]
            elif t["type"] == "translation":
                translation = [v + float(d) for v, d in zip(translation, values)]
    return scale, translation


def _omero(omero: Any, n_channels: int) -> tuple[list[str] | None, list[tuple[float, float]] | None]:
    """Channel labels and display windows (start, end) from omero metadata, if they cover every channel."""
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list) or len(channels) != n_channels:
        return None, None
    names = [str(c.get("label", f"c{i}")) for i, c in enumerate(channels)]
    windows = []
    for c in channels:
        w = c.get("window") or {}
        if not isinstance(w.get("start"), (int, float)) or not isinstance(w.get("end"), (int, float)):
            return names, None
        if w["end"] <= w["start"]:
            return names, None
        windows.append((float(w["start"]), float(w["end"])))
    return names, windows


def _is_rgb(omero: Any, level0: da.Array, axes: str) -> bool:
    """uint8 image whose 3 or 4 channels are coloured red, green, blue (and white for alpha) in omero metadata."""
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if level0.dtype != np.uint8 or "c" not in axes or not isinstance(channels, list):
        return False
    n = level0.shape[axes.index("c")]
    colors = [str(c.get("color", "")).upper() for c in channels if isinstance(c, dict)]
    return n in (3, 4) and len(colors) == n and colors == ["FF0000", "00FF00", "0000FF", "FFFFFF"][:n]


def _drop_label_channel(levels: list[da.Array], axes: str, scale: list, translation: list, where: str):
    """Labels are single-channel: drop a singleton c axis, refuse a real one."""
    if "c" not in axes:
        return levels, axes, scale, translation
    ic = axes.index("c")
    if levels[0].shape[ic] != 1:
        raise ImageReadError(f"{where}: label image has {levels[0].shape[ic]} channels; labels must be single-channel.")
    index = tuple(0 if i == ic else slice(None) for i in range(len(axes)))
    keep = [i for i in range(len(axes)) if i != ic]
    return (
        [lv[index] for lv in levels],
        axes.replace("c", ""),
        [scale[i] for i in keep],
        [translation[i] for i in keep],
    )


def _label_classes(image_label: Any) -> tuple[dict[int, tuple[float, ...]], dict[int, str]]:
    """label value -> RGBA (0..1) from ``colors``, label value -> class name from ``properties``."""
    colors: dict[int, tuple[float, ...]] = {}
    names: dict[int, str] = {}
    if not isinstance(image_label, dict):
        return colors, names
    for entry in image_label.get("colors") or []:
        rgba = entry.get("rgba")
        if "label-value" in entry and isinstance(rgba, list) and len(rgba) == 4:
            colors[int(entry["label-value"])] = tuple(float(v) / 255.0 for v in rgba)
    for entry in image_label.get("properties") or []:
        text = next((entry[k] for k in ("class", "name", "label", "class_name") if isinstance(entry.get(k), str)), None)
        if "label-value" in entry and text is not None:
            names[int(entry["label-value"])] = text
    return colors, names


# ---------------------------------------------------------------------------------------------- plain zarr
def _plain_group(root: _Root, path: str, group: zarr.Group, name: str) -> Pyramid:
    """A group of arrays "0", "1", ... without multiscales metadata: a pyramid if their shapes decrease."""
    members = {k: v for k, v in group.arrays() if k.isdigit()}
    keys = [str(i) for i in range(len(members))]
    if not members or set(keys) != set(members):
        raise ImageReadError(
            f"{root.where(path)}: a zarr group without multiscales metadata must hold arrays '0', '1', ... "
            f"(found {sorted(members) or 'none'}). Open one array directly, or add OME-Zarr metadata."
        )
    arrays = [members[k] for k in keys]
    shapes = [a.shape for a in arrays]
    if any(a.ndim != arrays[0].ndim for a in arrays) or any(
        any(c > f for c, f in zip(coarse, fine)) or coarse == fine for fine, coarse in zip(shapes, shapes[1:])
    ):
        raise ImageReadError(
            f"{root.where(path)}: arrays {keys} have shapes {shapes}, which do not decrease as a pyramid's levels do. "
            f"Open one of them directly (e.g. {root.where(_join(path, '0'))})."
        )
    return _plain(arrays, [_join(path, k) for k in keys], root, name, root.where(path))


def _plain(arrays: list[zarr.Array], paths: list[str], root: _Root, name: str, source: str) -> Pyramid:
    """Levels without NGFF metadata: axes from dimension names or the number of dimensions, unit scale."""
    first = arrays[0]
    names = getattr(first.metadata, "dimension_names", None)
    axes = guess_axes(first.shape, names)
    levels = [lazy_level(a, root.where(p), chunk_files=True) for a, p in zip(arrays, paths)]
    return Pyramid(
        levels=levels,
        axes=axes,
        scale=(1.0,) * len(axes),
        translation=(0.0,) * len(axes),
        name=name,
        contrast_limits=image_contrast(levels, axes, None),
        source=source,
    )


def _join(parent: str, child: str) -> str:
    return f"{parent}/{child}" if parent else child


def _stem(root: _Root) -> str:
    """'slide' for /data/slide.ome.zarr."""
    name = root.dir.name if root.dir is not None else "image"
    for suffix in (".zarr", ".ome"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name or "image"
