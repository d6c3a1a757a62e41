"""Callbacks of ``fit``: what a callback is, and loggers of a run (TensorBoard event files, a CSV table).

A callback is either a function ``f(record)``, called with each epoch's history record as soon as it is
complete, or an object with any of these methods (those it lacks are not called):

- ``start(run)``: once, before the first step and after fit's checks; ``run`` is a ``RunInfo``.
- ``step_end(step, metrics)``: after each step; ``step`` counts the run's steps from 1 (a resumed run goes on
  counting), ``metrics`` holds the epoch's running means so far, ``recon``, ``kl`` and ``loss`` (nats per
  example), as float64 tensors on the training device: 0-d, or (N,) for a stack. Nothing is read from the
  device unless the callback reads it, and fit builds them only when some callback has ``step_end``.
- ``epoch_end(record, params, opt_state)``: after each epoch, with its history record, the model's
  ``Params`` after the epoch (a copy the callback may keep) and its optimiser state (read the learning rate
  with ``funcvae.optim.learning_rate(run.optimizer, opt_state)``). For a stack, once per model: the record
  has ``"model": m`` and the params and state are model m's.
- ``end()``: once, when fit returns or raises after ``start``.

Callbacks run in the order given, on rank 0 only. An epoch's callbacks run before its checkpoint is
written: one that raises stops the run as a ``CallbackError`` naming it and the epoch (the original error
chained), the checkpoint on disk is the last good one, whole, and a resumed run trains that epoch again.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from csv import reader as csv_reader, writer as csv_writer
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import optree
import torch
from torchvision.utils import make_grid

from funcvae import optim
from funcvae.checks import check_int
from funcvae.context import examples_and_context
from funcvae.diagnostics import kl_per_dim
from funcvae.model import Model, Params
from funcvae.pictures import PADDING, prior_images, reconstruction_images
from funcvae.stacks import unstack

__all__ = ["CallbackError", "RunInfo", "csv", "flatten", "tensorboard"]

_HOOKS = ("start", "step_end", "epoch_end", "end")
#: The prior samples TensorBoard shows each time: two rows of eight, the same draws every time.
SAMPLES, SAMPLES_PER_ROW, SAMPLES_SEED = 16, 8, 0
#: The history keys the hparams dashboard lists as a run's metrics.
METRICS = ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl")


class CallbackError(RuntimeError):
    """A callback raised; the message names it and when, the original error is the ``__cause__``."""


class RunInfo(NamedTuple):
    """What ``start(run)`` is told. ``settings``: the run's settings as JSON values (``FitConfig``'s fields,
    ``objective`` and ``optimizer`` names, a list of one per model for a stack, and ``examples``, the size of
    the training set); ``params``: the params training starts from (a resumed run's, a stack for a stack);
    ``models``: N for a stack, else None; ``optimizer``: as fit runs it (what ``opt_state`` is a state of);
    ``steps_per_epoch``; ``epoch``: epochs trained already (0 for a new run)."""

    settings: dict
    params: Params
    models: int | None
    optimizer: optim.GradientTransformation
    steps_per_epoch: int
    epoch: int


class Hooks:
    """fit's callbacks as the hooks each has, checked when made (before any work); a call of one that raises
    becomes a ``CallbackError`` naming it. True when some callback has an epoch-end hook."""

    def __init__(self, callbacks: Sequence = ()):
        self._all = []
        for c in callbacks:
            hooks = {h: getattr(c, h) for h in _HOOKS if callable(getattr(c, h, None))}
            if not hooks and not callable(c):
                raise TypeError(f"callbacks: {c!r} is neither a function f(record) nor an object with a start, "
                                "step_end, epoch_end or end method")
            self._all.append((_name(c), hooks or {"epoch_end": c}, not hooks))
        self.stepping = any("step_end" in hooks for _, hooks, _ in self._all)

    def __bool__(self) -> bool:
        return any("epoch_end" in hooks for _, hooks, _ in self._all)

    @contextmanager
    def running(self, run: RunInfo):
        """Start hooks on entering, end hooks on leaving. After an error, an end hook that raises is a warning:
        the error that stopped the run is the one raised."""
        ended = []  # the end hooks of the callbacks started (or without a start hook), in order
        try:
            for name, hooks, _ in self._all:
                if "start" in hooks:
                    _call(name, hooks["start"], (run,), "at the start of the run")
                ended.append((name, hooks.get("end")))
            yield
        except BaseException:
            for name, end in ended:
                try:
                    if end is not None:
                        end()
                except Exception as e:
                    warnings.warn(f"callback {name} failed at the end of a run stopped by an error: "
                                  f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=3)
            raise
        for name, end in ended:
            if end is not None:
                _call(name, end, (), "at the end of the run")

    def step_end(self, step: int, metrics: dict, when: str) -> None:
        for name, hooks, _ in self._all:
            if "step_end" in hooks:
                _call(name, hooks["step_end"], (step, metrics), when)

    def epoch_end(self, record: dict, model: Model, state, when: str) -> None:
        """Each epoch-end hook with ``record``; a method also with the params (copied once: on a GPU the compiled
        step's outputs live in memory its next run overwrites) and the optimiser state of ``state``, the model's
        ``TrainState``."""
        params = None
        for name, hooks, plain in self._all:
            if "epoch_end" not in hooks:
                continue
            if not plain and params is None:
                params = Params(model, optree.tree_map(torch.clone, state.tree))
            _call(name, hooks["epoch_end"], (record,) if plain else (record, params, state.opt_state), when)


def _call(name: str, hook: Callable, args: tuple, when: str) -> None:
    try:
        hook(*args)
    except Exception as e:
        raise CallbackError(f"callback {name} failed {when}: {type(e).__name__}: {e}") from e


def _name(c) -> str:
    return getattr(c, "__qualname__", None) or repr(c)


def flatten(record: dict) -> dict:
    """A history record with its nested dicts flattened, ``{"kl_groups": {"z1": 2.0}}`` -> ``{"kl_groups/z1":
    2.0}``; other values (None among them) as they are, in the record's order."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in flatten(value).items()})
        else:
            out[key] = value
    return out


def tensorboard(logdir, *, images=None, context=None, images_every: int = 1, hparams: dict | None = None
                ) -> "TensorBoard":
    """A callback that writes the run as TensorBoard event files in ``logdir`` (a stack: ``logdir/model_<m>``).

    Per epoch (the step is the epoch): every history key as a scalar of the same tag (``loss``, ``val_kl``,
    ``skipped``, ``seconds``, ``beta`` where not None; a latent group's ``kl_groups/z1``), the learning rate
    ``lr`` of the next step, and with ``images`` the KL of each latent dimension on them
    (``kl_per_dim/<i>``, nats per example, for a Gaussian posterior and a factorised prior). Every
    ``images_every`` epochs, images: ``samples`` (16 decoded prior draws, the same draws every time) and
    with ``images`` ``reconstructions`` (the inputs above their reconstructions from the posterior mean). At
    the start, the run's settings for the hparams dashboard. Needs the tensorboard package
    (``pip install 'funcvae[tensorboard]'``); view with ``tensorboard --logdir LOGDIR``.

    Args:
      logdir: the folder of the event files, made if missing; checked writable here, before any training.
      images: a few fixed examples (8 to 16, held-out ones), as for ``funcvae.encode``; integer levels are
        divided by the run's ``scale``, as its data are; checked at the start.
      context: a conditional model's context of ``images``.
      images_every: epochs between images.
      hparams: the settings to show, flat ``{name: bool, int, float or str}`` (other values as text); default
        fit's (``RunInfo.settings``).

    Raises:
      ImportError: the tensorboard package is missing.
      ValueError: ``logdir`` cannot be made or written.
    """
    _summary_writer()
    check_int("images_every", images_every)
    return TensorBoard(_writable(logdir, "logdir"), images, context, images_every, hparams)


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError("funcvae.callbacks.tensorboard needs the tensorboard package: pip install "
                          "'funcvae[tensorboard]'") from e
    return SummaryWriter


class TensorBoard:
    """The callback ``tensorboard(...)`` makes."""

    def __init__(self, logdir: Path, images, context, images_every: int, hparams: dict | None):
        self.logdir, self._images, self._context, self.images_every = logdir, images, context, images_every
        self._hparams, self._writers = hparams, []

    def __repr__(self) -> str:
        return f"tensorboard({str(self.logdir)!r})"

    def start(self, run: RunInfo) -> None:
        self._run, self._x, self._c = run, None, None
        if self._images is not None:
            one = run.params if run.models is None else unstack(run.params)[0]
            # 8-bit levels, as the run's data may be, stand for the values the run's scale makes of them.
            scale = None if _floating(self._images) else run.settings.get("scale")
            self._x, self._c = examples_and_context(one, self._images, self._context, scale=scale, name="images")
        folders = [self.logdir] if run.models is None else [self.logdir / f"model_{m}" for m in range(run.models)]
        # A resumed run's epochs after its checkpoint, logged before a stop, are trained again: TensorBoard
        # drops what the folder holds from that step on.
        purge = run.epoch + 1 if run.epoch else None
        self._writers = [_summary_writer()(str(f), purge_step=purge) for f in folders]
        settings = flatten(run.settings if self._hparams is None else self._hparams)
        for m, w in enumerate(self._writers):
            _write_hparams(w, settings if run.models is None else {**settings, "model": m})

    def epoch_end(self, record: dict, params: Params, opt_state) -> None:
        w, epoch, model = self._writers[record.get("model", 0)], record["epoch"], params.model
        for tag, value in flatten(record).items():
            if tag not in ("epoch", "model") and value is not None:
                w.add_scalar(tag, value, epoch)
        lr = optim.learning_rate(self._run.optimizer, opt_state)
        if lr is not None:
            w.add_scalar("lr", lr, epoch)
        if self._x is not None and model.gaussian and model.prior.factorised:
            for i, kl in enumerate(kl_per_dim(params, self._x, context=self._c).tolist()):
                w.add_scalar(f"kl_per_dim/{i}", kl, epoch)
        if epoch % self.images_every == 0:
            w.add_image("samples", _grid(prior_images(params, SAMPLES, seed=SAMPLES_SEED), SAMPLES_PER_ROW), epoch)
            if self._x is not None:
                shown = reconstruction_images(params, self._x, context=self._c)
                w.add_image("reconstructions", _grid(shown, self._x.shape[0]), epoch)
        w.flush()

    def end(self) -> None:
        for w in self._writers:
            w.close()
        self._writers = []


def _floating(images) -> bool:
    """Whether ``images`` (a tensor or array; other containers are read as values) hold floats rather than levels."""
    dtype = getattr(images, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype.is_floating_point
    return dtype is None or getattr(dtype, "kind", "f") == "f"


def _grid(images, nrow: int):
    """Images (N, C, H, W) as one (C', H', W') grid on the CPU, bordered as ``funcvae.pictures`` draws them."""
    return make_grid(images.detach().float().cpu(), nrow=nrow, padding=PADDING, pad_value=1.0)


def _write_hparams(writer, settings: dict) -> None:
    """``settings`` for the hparams dashboard, this folder's session, ``METRICS`` as its metrics; values that
    are not a bool, number or string as their JSON text (a tuple as a list, as config files hold it), None
    left out."""
    from torch.utils.tensorboard.summary import hparams

    values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
              for k, v in settings.items() if v is not None}
    experiment, session, _ = hparams(values, dict.fromkeys(METRICS, 0.0))
    writer.file_writer.add_summary(experiment)
    writer.file_writer.add_summary(session)


def csv(path) -> "CSV":
    """A callback that writes one row per epoch to the CSV file ``path``: a header, then every history key a
    column (nested dicts flattened, ``kl_groups/z1``; a stack's ``model`` too), None as an empty cell,
    floats as Python writes them (read back exactly by ``float``); flushed each epoch. A new run replaces the
    file; a resumed run continues it from its checkpoint's epoch (rows of later epochs, logged before a
    checkpoint that never came, are dropped).

    Raises:
      ValueError: ``path`` is a folder, or its folder cannot be made or written (checked here).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"csv: {path} is a folder, not a file")
    _writable(path.parent, "the folder of csv")
    return CSV(path)


class CSV:
    """The callback ``csv(path)`` makes."""

    def __init__(self, path: Path):
        self.path, self._file = path, None

    def __repr__(self) -> str:
        return f"csv({str(self.path)!r})"

    def start(self, run: RunInfo) -> None:
        rows = []
        if run.epoch and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = list(csv_reader(f))
            at = rows[0].index("epoch") if rows and "epoch" in rows[0] else None
            if at is None:
                raise ValueError(f"{self.path} has no epoch column: it is not a table this callback wrote")
            rows = rows[:1] + [r for r in rows[1:] if int(r[at]) <= run.epoch]
        self._file = open(self.path, "w", newline="")
        self._out, self._columns = csv_writer(self._file), rows[0] if rows else None
        self._out.writerows(rows)
        self._file.flush()

    def epoch_end(self, record: dict, params: Params, opt_state) -> None:
        row = flatten(record)
        if self._columns is None:
            self._columns = list(row)
            self._out.writerow(self._columns)
        elif list(row) != self._columns:
            raise ValueError(f"{self.path} has the columns {self._columns}; this run's records have {list(row)}")
        self._out.writerow(["" if v is None else v for v in row.values()])
        self._file.flush()

    def end(self) -> None:
        self._file.close()


def _writable(folder, what: str) -> Path:
    """``folder`` made if missing and proved writable with a probe file; else ValueError naming ``what``."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".funcvae.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {folder} cannot be written: {e.strerror or e}") from e
    return folder
