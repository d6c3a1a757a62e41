"""Params on disk: safetensors (no pickle, so loading runs no code), leaves addressed by path, the spec
as JSON metadata; written to a temporary file and renamed, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from funcvae.model import ModelSpec, Params, check_params, leaves_by_path

_SPEC_KEY = "funcvae_spec"


def save_params(path: str | os.PathLike, params: Params) -> None:
    """Write ``params`` to ``path`` (a .safetensors file) atomically."""
    check_params(params)
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in leaves_by_path(params).items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={_SPEC_KEY: json.dumps(params.spec.to_dict())})
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file follows the umask like any other
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_params(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Params:
    """Read params written by ``save_params``; raises ValueError naming what is wrong with a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no params file at {path}")
    try:
        tensors = load_file(path, device=str(device))
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
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
        raise ValueError(f"{path}: the spec metadata is not valid JSON ({e})") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
