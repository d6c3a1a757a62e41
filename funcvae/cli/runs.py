"""Run folders: a new one, named by the time it starts, holding config.json; and a finished one, opened once its
files are found to be one run's."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

import funcvae
from funcvae._runtime import records
from funcvae.cli import folder
from funcvae.cli.model import recorded_model


def create(parent: Path, name: str, config: dict) -> Path:
    """A new run folder ``parent/<YYYYmmdd-HHMMSS>-name`` (``-2``, ``-3``, ... appended when runs start in the
    same second) holding ``config`` as config.json."""
    parent.mkdir(parents=True, exist_ok=True)
    stamped = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for i in itertools.count(1):
        run_dir = parent / (stamped if i == 1 else f"{stamped}-{i}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    folder.write_config(run_dir, config)
    return run_dir


def open_run(args) -> tuple[Path, dict, funcvae.Params, list[dict]]:
    """The run folder of ``RUN`` with its config, params (of the model config.json records) and history, once
    its files are found to be one finished run's (else RunError naming the file):

    - config.json is well formed, and params.safetensors holds the model it describes (its built-in spec,
      or the user's model file it names), one model;
    - with checkpoint.safetensors (train always writes it; it holds the run's last state, and is the truth):
      the checkpoint is of the same model, seed and binarisation, params.safetensors equals its params bit
      for bit (a run interrupted since is unfinished: its params are older than its checkpoint), and
      history.jsonl equals its history, which is the history returned;
    - without one (deleted to save space: it is several times the params' size with the optimiser's state;
      or a run shared without it) nothing on disk ties the params to the history, so both are taken as they
      are once well formed: the params' model as above, history.jsonl's records with their epochs in order.
      Refusing such folders would make every shared run carry its optimiser state to be read at all.
    """
    run_dir = Path(args.run_dir)
    for name in (folder.CONFIG, folder.PARAMS):
        if not (run_dir / name).is_file():
            args.parser.error(f"{run_dir}: no {name} there (not a finished run folder written by train)")
    config = folder.read_config(run_dir)
    model = recorded_model(args, config, run_dir / folder.CONFIG)
    params = folder.read_params(run_dir / folder.PARAMS, model, args.accept_changed_code)
    history = folder.read_history(run_dir / folder.HISTORY)
    if (run_dir / funcvae.CHECKPOINT_FILE).is_file():
        history = _checkpoint_history(run_dir, config, params, history, args.accept_changed_code)
    return run_dir, config, params, history


def open_scored(args) -> tuple[Path, dict, funcvae.Params, list[dict]]:
    """What ``eval`` scores, as ``open_run`` gives it: the run folder ``RUN``; or with ``--pretrained NAME`` the
    model the package ships (``funcvae.models.pretrained``), its training history, a config of its data (data
    set NAME's grey levels, as it was trained) and the folder its output goes to: ``--out``, by default
    ``runs/pretrained-NAME``, made if need be. Exactly one of the two is a usage error otherwise."""
    if (args.run_dir is None) == (args.pretrained is None):
        args.parser.error("give a run folder RUN or --pretrained NAME" + ("" if args.run_dir is None else ", not both"))
    if args.pretrained is None:
        if args.out is not None:
            args.parser.error("--out is for --pretrained; eval of a run writes into the run folder")
        return open_run(args)
    out = Path(args.out or f"runs/pretrained-{args.pretrained}")
    out.mkdir(parents=True, exist_ok=True)
    params, history = funcvae.models.load_pretrained(*funcvae.models.PRETRAINED[args.pretrained])
    # Grey levels draw no binarisation, so the seed eval passes with the data set is never used.
    return out, {"dataset": args.pretrained, "binarize": None, "fit": {"seed": 0}}, params, history


def _checkpoint_history(run_dir: Path, config: dict, params: funcvae.Params, history: list[dict],
                        accept_changed_code: bool) -> list[dict]:
    """The checkpoint's history, once the checkpoint is found to be of config.json's run and params.safetensors
    and history.jsonl (``history``) to be its; else RunError."""
    path = run_dir / funcvae.CHECKPOINT_FILE
    checkpoint, kept = folder.read_checkpoint(path, params.model, accept_changed_code)
    fit, recorded = config["fit"], checkpoint.config
    if (recorded.get("seed"), recorded.get("binarize")) != ([fit["seed"]], fit["binarize"]):
        raise folder.RunError(f"{run_dir / folder.CONFIG} does not describe the run of {path}: seed {fit['seed']}, "
                              f"binarize {fit['binarize']!r}; the checkpoint's: seed {recorded.get('seed')}, "
                              f"binarize {recorded.get('binarize')!r}")
    differ = _differing_leaf(params, checkpoint.params)
    if differ and (checkpoint.step or checkpoint.epoch < fit["epochs"]):
        at = f"epoch {checkpoint.epoch}" + (f" and {checkpoint.step} steps of the next" if checkpoint.step else "")
        raise folder.RunError(f"{run_dir} is an unfinished run: its checkpoint is at {at} of {fit['epochs']}, and "
                              f"params.safetensors is older; finish it: python -m funcvae train --resume {run_dir}")
    if differ:
        raise folder.RunError(f"{run_dir / folder.PARAMS} is not the params of {path}, the run's last state "
                              f"({differ} differs): are they from another run?")
    lines, truth = _canonical(history), _canonical(kept)
    if lines != truth:
        how = (f"it holds {len(lines)} epochs, the checkpoint {len(truth)}" if len(lines) != len(truth) else
               f"its record of epoch {next(i for i, (a, b) in enumerate(zip(lines, truth), 1) if a != b)} differs")
        raise folder.RunError(f"{run_dir / folder.HISTORY} is not the history of {path}: {how}")
    return kept


def _differing_leaf(params: funcvae.Params, other: funcvae.Params) -> str | None:
    """The first leaf (by path) whose dtype, shape or any bit differs, or None when ``params`` equals ``other``."""
    mine, theirs = funcvae.leaves_by_path(params), funcvae.leaves_by_path(other)
    for path in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(path), theirs.get(path)
        if a is None or b is None or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return path
    return None


def _canonical(history: list[dict]) -> list[str]:
    """Each record as one string, so that records compare equal with NaN in them (NaN != NaN as a float)."""
    return [records.dumps(r, sort_keys=True) for r in history]
