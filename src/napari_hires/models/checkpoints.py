"""Published checkpoints read without unpickling: ``.pth``/``.pt``/``.bin``/``.ckpt`` through
``torch.load(weights_only=True)``, ``.safetensors``, and ``.npz`` with ``allow_pickle=False``; and the one check that
a file's tensors fit a model."""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from napari_hires.errors import HiresError

#: Suffixes of the published checkpoint files napari-hires reads.
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # torch.save files (.ckpt: trainers' payloads, as xT ships them)
CHECKPOINT_SUFFIXES = (*_TORCH_SUFFIXES, ".safetensors", ".npz")
#: Keys under which training scripts keep the model's state dict inside a saved payload, most specific first.
_PAYLOAD_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "params")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensors under their published names (wrappers and ``module.`` prefixes removed), what the file
    said beside them (``meta``: a Hugging Face ``config.json``, safetensors metadata, a payload's other entries) and
    the file's format ("torch", "safetensors" or "npz")."""

    path: Path
    tensors: dict[str, torch.Tensor]
    format: str
    meta: dict[str, Any] = field(default_factory=dict)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The tensors of a published checkpoint, or a clear error; nothing in the file is ever run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        tensors, meta, fmt = _read_npz(path), {}, "npz"
    elif suffix == ".safetensors":
        tensors, meta, fmt = _read_safetensors(path), {}, "safetensors"
    elif suffix in _TORCH_SUFFIXES:
        (tensors, meta), fmt = _read_torch(path), "torch"
    else:
        raise HiresError(f"{path} is not a checkpoint napari-hires reads: expected one of "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    config = path.with_name("config.json")  # Hugging Face keeps the model's configuration beside model.safetensors
    if config.is_file():
        try:
            meta = {**meta, "config": json.loads(config.read_text())}
        except json.JSONDecodeError as err:
            raise HiresError(f"{config} (beside {path.name}) is not valid JSON ({err}); fix or remove it") from None
    if not tensors:
        raise HiresError(f"{path} holds no tensors")
    return Checkpoint(path, tensors, fmt, meta)


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {k: torch.from_numpy(np.ascontiguousarray(archive[k])) for k in archive.files}
    except ValueError as err:  # object arrays need pickle, which is refused
        raise HiresError(f"refusing to read {path}: it holds pickled objects ({err}); napari-hires reads only plain "
                         "arrays from .npz files") from None
    except Exception as err:  # zipfile.BadZipFile, a truncated member, EOFError
        raise HiresError(f"{path} is not a readable .npz archive ({type(err).__name__}: {err}); download it "
                         "again") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt or truncated files
        raise HiresError(f"{path} is not a readable safetensors file ({err}); download it again") from None


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a ``torch.save`` file, found inside a trainer's payload and without ``module.``, and the
    payload's plain entries (epoch, metrics, arguments)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise HiresError(
            f"refusing to load {path}: it holds pickled objects other than tensors ({_refused(err)}), and "
            "napari-hires never runs code from a checkpoint. Save its state_dict alone "
            "(torch.save(model.state_dict(), ...)) or convert it to .safetensors in an environment you trust."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        first = str(err).splitlines()[0].split(". ")[0] if str(err) else ""  # torch's reason, not its advice
        raise HiresError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {first}); it may be "
                         "truncated: download it again") from None
    state = payload
    while isinstance(state, dict) and not _all_tensors(state):
        inner = next((state[k] for k in _PAYLOAD_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            raise HiresError(f"{path} holds a {type(payload).__name__} with entries {sorted(map(str, state))[:8]}, "
                             f"but no state dict of tensors (looked under {', '.join(_PAYLOAD_KEYS)})")
        state = inner
    if not isinstance(state, dict):
        raise HiresError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    if state and all(str(k).startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    plain = payload.items() if isinstance(payload, dict) else ()
    meta = {k: v for k, v in plain if not isinstance(v, (dict, torch.Tensor))}
    return dict(state), meta


def _refused(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (``io.open``), not its advice to load the file unsafely."""
    text = str(err)
    found = (re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
             or re.search(r"WeightsUnpickler error: ([^\n]+)", text))
    return found.group(1).strip() if found else type(err).__name__


def _all_tensors(state: Mapping) -> bool:
    return bool(state) and all(isinstance(v, torch.Tensor) for v in state.values())


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_tensors(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, torch.Tensor], source: str, what: str,
                  hint: str, convert: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
    """Refuse ``found`` unless it holds exactly the ``expected`` tensors (name -> shape) with their shapes, after
    ``convert`` (by name) where a published layout differs from ours: one error listing the missing and the
    unexpected tensors and naming the first shape mismatch, then ``hint``."""
    convert = convert or {}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatch = None
    for name, shape in expected.items():
        if name not in found:
            continue
        got = tuple(found[name].shape)
        converted = tuple(convert[name](found[name]).shape) if name in convert else got
        if converted != tuple(shape):
            mismatch = (f"{name} is {got} in the file" + (f" ({converted} in our layout)" if converted != got else "")
                        + f" but {what} expects {tuple(shape)}")
            break
    if not (missing or unexpected or mismatch):
        return
    parts = [f"{len(missing)} missing tensors ({_listing(missing)})"] if missing else []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors ({_listing(unexpected)})")
    if mismatch:
        parts.append(f"first shape mismatch: {mismatch}")
    raise HiresError(f"{source} does not match {what}: " + "; ".join(parts) + f". {hint}")


Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TensorMap:
    """Where each tensor of a model comes from in a published checkpoint: ``sources`` maps the model's state-dict
    names to the checkpoint's, ``transforms`` (by model name) turn a published layout into ours (a Flax kernel
    transposed), ``ignore`` names checkpoint tensors the model has no use for (a classifier an encoder drops) and
    ``keep`` names model tensors no checkpoint holds (a new head over a published backbone), left as initialised."""

    sources: dict[str, str]
    transforms: dict[str, Transform] = field(default_factory=dict)
    ignore: frozenset[str] = frozenset()
    keep: frozenset[str] = frozenset()

    def state(self, checkpoint: Checkpoint, model: torch.nn.Module, what: str, hint: str) -> dict[str, torch.Tensor]:
        """The model's state dict built from ``checkpoint``, after :func:`check_tensors` on the published names."""
        wanted = model.state_dict()
        unmapped = [k for k in wanted if k not in self.sources and k not in self.keep]
        if unmapped:  # a converter's gap, not the user's file: say so plainly
            raise HiresError(f"the converter for {what} maps no checkpoint tensor to {_listing(unmapped)}; "
                             "please report this")
        expected = {theirs: tuple(wanted[ours].shape) for ours, theirs in self.sources.items()}
        convert = {theirs: self.transforms[ours] for ours, theirs in self.sources.items() if ours in self.transforms}
        found = {k: v for k, v in checkpoint.tensors.items() if k not in self.ignore}
        check_tensors(expected, found, str(checkpoint.path), what, hint, convert)
        state = {ours: (convert[theirs](found[theirs]) if theirs in convert else found[theirs])
                 .to(wanted[ours].dtype).contiguous() for ours, theirs in self.sources.items()}
        return {**state, **{k: wanted[k] for k in self.keep}}
