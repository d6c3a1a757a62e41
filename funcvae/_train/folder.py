"""The run folder: its checks and lock, the checkpoint written there, and resuming from it only when the
run's settings and data are the checkpoint's (their fingerprint)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from funcvae._runtime import distributed, lock
from funcvae.checkpoint import Checkpoint, code_recorded, describe, load, restore, save, without_code
from funcvae.config import FitConfig
from funcvae.model import Model
from funcvae.ondisk import OnDisk
from funcvae.step import stat_names
from funcvae.pixels import level_values, pixel_values

CHECKPOINT_FILE = "checkpoint.safetensors"
#: Rows of the data converted and hashed at a time by the data's fingerprint.
FINGERPRINT_ROWS = 4096


@contextmanager
def held(config: FitConfig, world: distributed.World):
    """The checkpoint's path (None without a ``checkpoint_dir``) while this process holds its folder: checked
    before any work (a folder that cannot be made or written, a checkpoint path that is not a file, a
    checkpoint that the call neither resumes nor overwrites), locked against a second run, and cleared of
    temporary files a killed run left. Only the main process writes, so only it takes the folder."""
    if config.checkpoint_dir is None:
        yield None
        return
    folder = Path(config.checkpoint_dir)
    ckpt = folder / CHECKPOINT_FILE
    if not world.is_main:
        yield ckpt
        return
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{CHECKPOINT_FILE}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"checkpoint_dir {folder} cannot be written: {e.strerror or e}") from e
    if ckpt.exists() and not ckpt.is_file():
        raise ValueError(f"{ckpt} is not a file: the checkpoint cannot be written there")
    with lock.hold(folder):
        if ckpt.exists() and not (config.resume or config.overwrite):
            raise ValueError(f"{folder} already holds a checkpoint: pass resume=True to continue it, or "
                             "overwrite=True to start afresh and replace it")
        for stale in folder.glob(f".{CHECKPOINT_FILE}.*"):
            stale.unlink()  # a write or probe cut short by a kill; the checkpoint beside it is whole
        yield ckpt


def fingerprint(model: Model, stack: int | None, seeds: list, config: FitConfig, description: dict,
                data: tuple[Tensor, int | float | None, torch.dtype], x_val: Tensor | None,
                contexts: tuple[Tensor | None, Tensor | None] = (None, None)) -> dict:
    """The settings a resumed run must share, with digests of its data as fit sees it (JSON values, as they
    read back from a checkpoint). ``data``: the training set, its scale and the params' dtype; ``contexts``:
    a conditional model's training and held-out contexts (digested too: other labels are other data)."""
    dtype = data[2]
    out = {"model": describe(model), "stack": stack, "seed": seeds,
           "batch_size": config.batch_size, "binarize": config.binarize, **description,
           "matmul_dtype": None if config.matmul_dtype is None else str(config.matmul_dtype).removeprefix("torch."),
           "data": data_fingerprint(*data),
           "val_data": None if x_val is None else data_fingerprint(x_val, None, dtype)}
    if model.context is not None:
        out["context"] = [None if c is None else data_fingerprint(c, None, dtype) for c in contexts]
    return json.loads(json.dumps(out))  # as it reads back from a checkpoint (tuples become lists)


def data_fingerprint(x: Tensor | OnDisk, scale: int | float | None, dtype: torch.dtype) -> dict:
    """Shape, dtype and the SHA-256 of the bytes of the data as the model sees them (after conversion and
    scaling): any change to any value, or to the order of the examples, is another digest. uint8 levels are
    hashed as their values (``pixel_values``), so the same images as 8-bit pixels and as floats are one
    digest; ``FINGERPRINT_ROWS`` rows at a time, never a float copy of the whole set, and levels ``OnDisk`` read
    from their file as they are hashed (the digest is that of the same levels in memory)."""
    digest = hashlib.sha256()
    levels = None if scale is None else level_values(scale, dtype, x.device)
    for rows in (x if isinstance(x, OnDisk) else x.detach()).split(FINGERPRINT_ROWS):
        values = rows if levels is None else pixel_values(rows, levels)
        digest.update(values.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return {"shape": list(x.shape), "dtype": str(dtype).removeprefix("torch."), "sha256": digest.hexdigest()}


def start(fresh: Checkpoint, ckpt: Path | None, resume: bool, prints: dict | None, *, epochs: int,
          steps: int, rng: Tensor, device: torch.device, accept_changed_code: bool = False,
          objective=None) -> Checkpoint:
    """The state training starts from: ``fresh``, or the checkpoint at ``ckpt`` when resuming and one exists.
    ``prints``: this run's ``fingerprint``; ``rng``: the stacked generator states of this run's first epoch
    (the shape a mid-epoch checkpoint's must have); ``objective``: the run's (its reports are columns of the
    sums).

    Raises:
      ValueError: a checkpoint made with other settings or data, or one this run cannot continue (more
        epochs than ``epochs``; a step outside an epoch of ``steps``; generator states or sums of another
        shape).
    """
    if not (resume and ckpt.is_file()):
        return fresh
    state = load(ckpt, device=device, model=fresh.model, accept_changed_code=accept_changed_code)
    # load compared the code that wrote the checkpoint with this run's (or was told to accept other code):
    # the model's description must agree in everything else. A checkpoint written before code digests were
    # recorded is compared by its functions' names too.
    names = accept_changed_code or code_recorded(state.config.get("model"))
    recorded = {**state.config, "model": without_code(state.config.get("model"), names)}
    prints = {**prints, "model": without_code(prints["model"], names)}
    mismatch = {k: (v, recorded.get(k)) for k, v in prints.items() if recorded.get(k) != v}
    if mismatch:
        diffs = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (new, old) in mismatch.items())
        raise ValueError(f"cannot resume from {ckpt}: it was made with other settings or data ({diffs})")
    _check_resumable(state, ckpt, epochs, steps, rng, len(fresh.history), stat_names(state.model, objective))
    return replace(state, train=state.train._replace(
        opt_state=restore(fresh.train.opt_state, state.train.opt_state, ckpt)))


def _check_resumable(state: Checkpoint, ckpt: Path, epochs: int, steps: int, rng: Tensor, models: int,
                     columns: tuple) -> None:
    """What a checkpoint of this run's settings must also hold to continue it: no more epochs than asked for,
    and mid-epoch, a step inside the epoch with this device's generator states and the epoch's sums."""
    where = f"cannot resume from {ckpt}"
    if state.epoch > epochs or (state.epoch == epochs and state.step):
        raise ValueError(f"{where}: it holds {state.epoch} epoch(s){f' and {state.step} step(s)' if state.step else ''}"
                         f", more than epochs={epochs}; ask for epochs >= {state.epoch + bool(state.step)}"
                         " (as many as it holds returns its params as they are)")
    if not state.step:
        return
    if state.step >= steps:
        raise ValueError(f"{where}: field 'step' is {state.step}, not inside an epoch of {steps} steps")
    if state.rng.shape != rng.shape:
        raise ValueError(f"{where}: field 'rng' has shape {tuple(state.rng.shape)}; this run's generators need "
                         f"{tuple(rng.shape)}")
    width = len(columns)
    if state.sums.shape != (models, width):
        raise ValueError(f"{where}: field 'sums' has shape {tuple(state.sums.shape)}, not "
                         f"{(models, width)}")


def write(ckpt: Path | None, world: distributed.World, state: Checkpoint) -> None:
    """Save ``state`` at ``ckpt`` from the main process (nothing without a checkpoint)."""
    if ckpt is not None and world.is_main:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save(ckpt, state)
