"""Params and whole training states on disk: safetensors (no pickle, so loading runs no code), tensors
addressed by path, everything else as JSON metadata; written to a temporary file, flushed, fsynced and
renamed, so a crash mid-write leaves the previous file intact and never half a file."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
import safetensors.torch
from safetensors import SafetensorError

from funcvae.model import ModelSpec, Params, check_params, leaves_by_path, stack_size
from funcvae.optim import AdamState

_SPEC_KEY = "funcvae_spec"
_STATE_KEY = "funcvae_state"
_FORMAT = "funcvae-checkpoint-1"


def save_params(path: str | os.PathLike, params: Params) -> None:
    """Write ``params`` to ``path`` (a .safetensors file) atomically."""
    check_params(params)
    tensors = {k: v.detach().contiguous().cpu() for k, v in leaves_by_path(params).items()}
    _write(Path(path), tensors, {_SPEC_KEY: json.dumps(params.spec.to_dict())})


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Everything needed to continue a run exactly.

    Attributes:
      params: one model or a stack.
      opt_state: the optimiser's state (Adam's count, mu, nu).
      epoch: epochs completed; ``step``: steps done within epoch ``epoch + 1`` (0 at an epoch boundary).
      config: the run's settings (seeds among them) and a fingerprint of its data, as plain JSON values.
      history: the per-epoch records so far (one list per model for a stack).
      rng: mid-epoch only: the state of each model's generator (uint8, one row per model) and ``sums``,
        the epoch's running metric sums, so the rest of the epoch draws and reports exactly as it would have.
    """

    params: Params
    opt_state: AdamState
    epoch: int
    step: int = 0
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    rng: Tensor | None = None
    sums: Tensor | None = None


def save(path: str | os.PathLike, state: Checkpoint) -> None:
    """Write ``state`` to ``path`` atomically (see ``Checkpoint``)."""
    stack_size(state.params)
    tensors = {f"params/{k}": v for k, v in leaves_by_path(state.params).items()}
    tensors["opt/count"] = state.opt_state.count
    for name in ("mu", "nu"):
        tensors.update({f"opt/{name}/{k}": v for k, v in leaves_by_path(Params(state.params.spec,
                                                                              getattr(state.opt_state, name))).items()})
    for name in ("rng", "sums"):
        if getattr(state, name) is not None:
            tensors[name] = getattr(state, name)
    meta = {"format": _FORMAT, "spec": state.params.spec.to_dict(), "epoch": state.epoch, "step": state.step,
            "config": state.config, "history": state.history}
    _write(Path(path), {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
           {_STATE_KEY: json.dumps(meta, allow_nan=False)})


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a ``Checkpoint`` written by ``save``; a corrupt, truncated or mismatched file raises ValueError
    naming what is wrong, a missing one FileNotFoundError."""
    path = Path(path)
    tensors, meta = _read(path, device)
    if _STATE_KEY not in meta:
        raise ValueError(f"{path} is not a funcvae checkpoint (no training state in its metadata)")
    state = _from_json(meta[_STATE_KEY], path)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else state!r}")
    try:
        spec = ModelSpec.from_dict(state["spec"])
        tree = _tree_from_paths(tensors, path)
        params = Params(spec, tree.pop("params"))
        opt = tree.pop("opt")
        opt_state = AdamState(opt["count"], opt["mu"], opt["nu"])
        _check_state(params, opt_state)
        return Checkpoint(params, opt_state, int(state["epoch"]), int(state["step"]), state["config"],
                          state["history"], tree.pop("rng", None), tree.pop("sums", None))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a consistent funcvae checkpoint ({type(e).__name__}: {e})") from e


def _check_state(params: Params, opt_state: AdamState) -> None:
    n = stack_size(params)
    if not isinstance(opt_state.count, Tensor) or opt_state.count.ndim != 0:
        raise ValueError("the optimiser's step count must be a 0-d tensor")
    for name in ("mu", "nu"):
        moments = Params(params.spec, getattr(opt_state, name))
        if stack_size(moments) != n:
            raise ValueError(f"the optimiser's {name} does not match the params")


def load_params(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Params:
    """Read params written by ``save_params``; raises ValueError naming what is wrong with a bad file."""
    path = Path(path)
    tensors, meta = _read(path, device)
    if _SPEC_KEY not in meta:
        raise ValueError(f"{path} has no funcvae spec in its metadata; was it written by funcvae.save_params?")
    try:
        spec = ModelSpec.from_dict(_from_json(meta[_SPEC_KEY], path))
    except TypeError as e:
        raise ValueError(f"{path}: the spec metadata does not describe a funcvae model ({e})") from e
    params = Params(spec, _tree_from_paths(tensors, path))
    try:
        check_params(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    return params


def _write(path: Path, tensors: dict, metadata: dict) -> None:
    data = safetensors.torch.save(tensors, metadata=metadata)  # serialised in memory: no file of its own
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file follows the umask like any other
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself must reach the disk
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read(path: Path, device) -> tuple[dict, dict]:
    """Tensors and metadata from ONE read of the file, so a file replaced meanwhile cannot mix versions."""
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        tensors = safetensors.torch.load(data)
    except (struct.error, ValueError, SafetensorError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    return {k: v.to(device) for k, v in tensors.items()}, meta


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_from_paths(tensors: dict, path: Path) -> dict:
    """``{"a/b": t}`` -> ``{"a": {"b": t}}``; a name that is both a leaf and a folder is an error (sorted
    order puts ``a`` before ``a/b``, so the leaf is met first)."""
    tree: dict = {}
    for key in sorted(tensors):
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: tensor {key!r} lies under another tensor")
        node[leaf] = tensors[key]
    return tree


def _from_json(text: str, path: Path) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the metadata is not valid JSON ({e})") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
