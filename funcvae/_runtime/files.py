"""Files written whole and checked when read: a safetensors file written to a temporary file, flushed,
fsynced and renamed (a crash mid-write leaves the previous file whole), carrying the SHA-256 of each tensor
and of its metadata, which ``verify`` checks before anything is built from the file."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

INTEGRITY_KEY = "funcvae_integrity"


def write(path: Path, tensors: dict, metadata: dict) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {**metadata, INTEGRITY_KEY: json.dumps(integrity(tensors, metadata))}
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


def integrity(tensors: dict, metadata: dict) -> dict:
    """The record ``verify`` checks: each tensor's checksum, and the digest of the other metadata."""
    return {"tensors": {k: _checksum(k, t) for k, t in sorted(tensors.items())}, "metadata": _digest(metadata)}


def _checksum(name: str, t: Tensor) -> str:
    """SHA-256 of a (contiguous, CPU) tensor's name, dtype, shape and bytes: the same bytes read as another
    dtype or shape fail it too."""
    h = hashlib.sha256(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _digest(metadata: dict) -> str:
    other = {k: v for k, v in metadata.items() if k != INTEGRITY_KEY}
    return hashlib.sha256(json.dumps(other, sort_keys=True).encode()).hexdigest()


def verify(path: Path, tensors: dict, metadata: dict) -> None:
    """ValueError naming the file and the first tensor (or the metadata) that fails its checksum."""
    if INTEGRITY_KEY not in metadata:
        raise ValueError(f"{path} carries no checksums: it was not written by this version of funcvae")
    record = from_json(metadata[INTEGRITY_KEY], path, "integrity")
    sums = record.get("tensors") if isinstance(record, dict) else None
    if not isinstance(sums, dict) or not isinstance(record.get("metadata"), str):
        raise ValueError(f"{path}: field 'integrity' is not a checksum record: {record!r:.80}")
    if sums.keys() != tensors.keys():
        odd = sorted(sums.keys() ^ tensors.keys())
        raise ValueError(f"{path} is corrupt: its tensors and its checksum record differ in {odd[:5]}")
    for name, t in tensors.items():
        if _checksum(name, t) != sums[name]:
            raise ValueError(f"{path} is corrupt: tensor {name!r} fails its checksum")
    if _digest(metadata) != record["metadata"]:
        raise ValueError(f"{path} is corrupt: its metadata fails its checksum")


def read(path: Path) -> tuple[dict, dict]:
    """Tensors (on the CPU) and metadata from ONE read of the file, so a file replaced meanwhile cannot mix
    versions."""
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        tensors = safetensors.torch.load(data)
    except (struct.error, ValueError, SafetensorError, OverflowError) as e:  # JSON errors are ValueErrors
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    return tensors, meta


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def from_json(text: str, path: Path, field: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: the {field} metadata is not valid JSON ({e})") from e


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
