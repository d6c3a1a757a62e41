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
from typing import Any

import optree

import torch
from torch import Tensor
import safetensors.torch
from safetensors import SafetensorError

from funcvae import models
from funcvae.model import Model, Params, check_params, leaves_by_path, paths_and_leaves, stack_size

_SPEC_KEY = "funcvae_spec"
_MODEL_KEY = "funcvae_model"
_STATE_KEY = "funcvae_state"
_FORMAT = "funcvae-checkpoint-2"
_FACTS = ("likelihood", "prior", "input_shape", "latent")


def describe(model: Model) -> dict:
    """What a file records of its model: the built-in spec (enough to rebuild it), or for a user's model its
    likelihood, prior, shapes and the names of its functions (to name a mismatch, not to rebuild it)."""
    if model.spec is not None:
        return {"spec": model.spec.to_dict()}
    return {"custom": {"encode": _name(model.encode), "decode": _name(model.decode), "init": _name(model.init_fn),
                       **_facts(model)}}


def _facts(model: Model) -> dict:
    """What a model states besides its functions (``_FACTS``), as JSON values."""
    return {"likelihood": model.likelihood.to_dict(), "prior": model.prior.to_dict(),
            "input_shape": list(model.input_shape), "latent": model.latent}


def save_params(path: str | os.PathLike, params: Params) -> None:
    """Write ``params`` to ``path`` (a .safetensors file) atomically; leaves by path, the model described."""
    check_params(params)
    tensors = {k: v.detach().contiguous().cpu() for k, v in leaves_by_path(params).items()}
    meta = describe(params.model)
    _write(Path(path), tensors, {_MODEL_KEY: json.dumps(meta)} | (
        {_SPEC_KEY: json.dumps(meta["spec"])} if "spec" in meta else {}))


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Everything needed to continue a run exactly.

    Attributes:
      params: one model or a stack.
      opt_state: the optimiser's state; as saved, a dict ``{path: tensor}`` unless ``load`` was given the
        ``template`` to rebuild its structure from.
      hyper: the objective's numbers (``objective.init()``); ``count``: steps taken (0-d int64).
      epoch: epochs completed; ``step``: steps done within epoch ``epoch + 1`` (0 at an epoch boundary).
      config: the run's settings (seeds among them) and a fingerprint of its data, as plain JSON values.
      history: the per-epoch records so far (one list per model).
      rng: mid-epoch only: the state of each model's generator (uint8, one row per model) and ``sums``,
        the epoch's running metric sums, so the rest of the epoch draws and reports exactly as it would have.
    """

    params: Params
    opt_state: Any
    hyper: dict
    count: Tensor
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
    tensors.update({f"opt/{k}": v for k, v in paths_and_leaves(state.opt_state)})
    tensors.update({f"hyper/{k}": v for k, v in state.hyper.items()})
    tensors["count"] = state.count
    for name in ("rng", "sums"):
        if getattr(state, name) is not None:
            tensors[name] = getattr(state, name)
    meta = {"format": _FORMAT, "model": describe(state.params.model), "epoch": state.epoch, "step": state.step,
            "config": state.config, "history": state.history}
    _write(Path(path), {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
           {_STATE_KEY: json.dumps(meta, allow_nan=False)})


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu", model: Model | None = None,
         template=None) -> Checkpoint:
    """Read a ``Checkpoint`` written by ``save``.

    Args:
      model: the model of a user's (not built-in) model; a built-in one rebuilds itself from the file.
      template: an optimiser state of the run's structure (``optimizer.init(...)``, stacked for a stack);
        its leaves are replaced by the file's, by path. Without it ``opt_state`` is ``{path: tensor}``.

    Raises:
      ValueError: a corrupt, truncated or mismatched file (naming what is wrong); FileNotFoundError.
    """
    path = Path(path)
    tensors, meta = _read(path, device)
    if _STATE_KEY not in meta:
        raise ValueError(f"{path} is not a funcvae checkpoint (no training state in its metadata)")
    state = _from_json(meta[_STATE_KEY], path)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format') if isinstance(state, dict) else state!r}")
    try:
        model = _model_of(state["model"], model, path)
        tree = _tree_from_paths({k: v for k, v in tensors.items() if k.startswith("params/")}, path)["params"]
        params = Params(model, tree)
        _check_leaves(params, path)
        opt = {k.removeprefix("opt/"): v for k, v in tensors.items() if k.startswith("opt/")}
        hyper = {k.removeprefix("hyper/"): v for k, v in tensors.items() if k.startswith("hyper/")}
        return Checkpoint(params, opt if template is None else restore(template, opt, path), hyper,
                          tensors["count"], int(state["epoch"]), int(state["step"]), state["config"],
                          state["history"], tensors.get("rng"), tensors.get("sums"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a consistent funcvae checkpoint ({type(e).__name__}: {e})") from e


def restore(template, flat: dict, path: Path):
    """An optimiser state of ``template``'s structure with the leaves of ``flat`` (``{path: tensor}``, as ``load``
    returns it without a template); ValueError naming the file and the paths that differ."""
    want = dict(paths_and_leaves(template))
    missing, extra = sorted(want.keys() - flat.keys()), sorted(flat.keys() - want.keys())
    if missing or extra:
        raise ValueError(f"{path}: its optimiser state does not match this run's optimiser (missing {missing[:5]}, "
                         f"unexpected {extra[:5]})")
    for k, t in want.items():
        if flat[k].shape != t.shape or flat[k].dtype != t.dtype:
            raise ValueError(f"{path}: optimiser leaf {k} has shape {tuple(flat[k].shape)} and dtype "
                             f"{flat[k].dtype}, this run's has {tuple(t.shape)} and {t.dtype}")
    treespec = optree.tree_structure(template, namespace="funcvae")
    return optree.tree_unflatten(treespec, [flat[k] for k in want])


def load_params(path: str | os.PathLike, *, model: Model | None = None, device: torch.device | str = "cpu") -> Params:
    """Read params written by ``save_params``.

    Args:
      model: the ``Model`` of a user's model (required for one; a built-in model rebuilds itself from the
        file, and when passed must match it).

    Raises:
      ValueError: a bad file, a user's model without ``model=``, or a model whose leaves differ from the
        file's (naming them).
    """
    path = Path(path)
    tensors, meta = _read(path, device)
    if _MODEL_KEY in meta:
        described = _from_json(meta[_MODEL_KEY], path)
    elif _SPEC_KEY in meta:  # written before models were open: a built-in spec alone
        described = {"spec": _from_json(meta[_SPEC_KEY], path)}
    else:
        raise ValueError(f"{path} has no funcvae model in its metadata; was it written by funcvae.save_params?")
    params = Params(_model_of(described, model, path), _tree_from_paths(tensors, path))
    _check_leaves(params, path)
    return params


def _model_of(described, model: Model | None, path: Path) -> Model:
    """The model a file describes: ``model`` when given (it must be of the same kind), else the built-in
    model its spec rebuilds."""
    if not isinstance(described, dict) or not ({"spec", "custom"} & described.keys()):
        raise ValueError(f"{path}: the model metadata is not a funcvae model description: {described!r}")
    if model is not None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a funcvae.Model, got {type(model).__name__}")
        mine = json.loads(json.dumps(describe(model)))  # as it reads back (tuples become lists)
        if "spec" in described and "spec" in mine and described["spec"] != mine["spec"]:
            raise ValueError(f"{path} holds a {described['spec']} model, not {model}")
        saved, given = _described_facts(described, path), _facts(model)
        differ = {k: (saved[k], given[k]) for k in saved if saved[k] != given[k]}
        if differ:
            raise ValueError(f"{path} holds a model that differs from the one passed in " + "; ".join(
                f"{k}: file {a!r}, model {b!r}" for k, (a, b) in differ.items()))
        return model
    if "custom" in described:
        c = described["custom"]
        raise ValueError(f"{path} holds a user's model (encode={c.get('encode')}, decode={c.get('decode')}); "
                         "pass it: load_params(path, model=model)")
    return _built_in(described["spec"], path)


def _built_in(spec: dict, path: Path) -> Model:
    try:
        return models.from_spec(models.ModelSpec.from_dict(spec))
    except TypeError as e:
        raise ValueError(f"{path}: the spec metadata does not describe a funcvae model ({e})") from e


def _described_facts(described: dict, path: Path) -> dict:
    """The facts (``_facts``) a file's description states: a user's model's as recorded, a built-in's from
    its spec."""
    if "custom" in described:
        return {k: described["custom"].get(k) for k in _FACTS}
    return _facts(_built_in(described["spec"], path))


def _check_leaves(params: Params, path: Path) -> None:
    try:
        stack_size(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


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
