"""``train``: a new run from the options, or ``--resume RUN`` with the settings of its config.json; prints a
table row per epoch and keeps the run folder's history.jsonl, checkpoint and params."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import funcvae
from funcvae import shorthand
from funcvae._runtime import lock, records
from funcvae.cli import folder, runs
from funcvae.cli.model import BUILT_IN, absolute, model_name, model_of, recorded_model
from funcvae.cli.options import (at_least, check_data, check_settings, fit_fields, given,
                                 objective_settings, optimizer_settings, settings_problem)
from funcvae.config import steps_per_epoch
from funcvae.shorthand import OBJECTIVES

COLUMNS = ("Epoch", "Reconstruction Loss", "KL Divergence", "Total ELBO Loss", "Val Recon", "Val KL",
           "Val Total", "s")
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")
#: The options --resume takes as they come: how far to train, where the data are, the progress bar.
RESUMABLE = frozenset({"epochs", "data_root", "quiet", "resume", "accept_changed_code"})
#: The options config.json's "fit" records under their own names.
AS_RECORDED = ("batch_size", "seed", "lr", "beta", "kl_warmup", "objective", "k", "free_bits", "optimizer", "momentum",
               "weight_decay", "checkpoint_every", "on_nonfinite")
_UNKNOWN = object()


def add_parser(sub, model: argparse.ArgumentParser) -> None:
    """``train``: the shared ``model`` options, the objective's, and those of the run itself."""
    p = sub.add_parser("train", parents=[model], help="train a VAE on real images and save the run")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="elbo (default): the beta-ELBO; iwae: the importance-weighted bound of --k samples")
    p.add_argument("--k", default=None, type=at_least(1), help="iwae only: importance samples per example (default: 5)")
    p.add_argument("--beta", default=None, type=float, help="elbo only: the KL weight (default: 1)")
    p.add_argument("--kl-warmup", default=None, type=float, help="elbo only: epochs of linear KL warm-up")
    p.add_argument("--data-root", default=None, help="folder to look in first (and download into)")
    p.add_argument("--binarize", default=None, choices=["static", "dynamic"])
    p.add_argument("--epochs", default=None, type=at_least(1), help="default 10; with --resume, extends the run")
    p.add_argument("--seed", default=0, type=at_least(0))
    p.add_argument("--checkpoint-every", default=None, type=at_least(1), metavar="STEPS",
                   help="checkpoint inside epochs too (always: after each epoch, and on Ctrl-C / SIGTERM)")
    p.add_argument("--on-nonfinite", default="raise", choices=["raise", "skip"])
    p.add_argument("--bf16", action="store_true",
                   help="matrix products in bfloat16, everything else in float32 (mixed precision)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in this run folder with the settings of its config.json (only "
                        "--epochs may change: it extends the run; --data-root and --quiet are taken too)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--accept-changed-code", action="store_true", help="with --resume: " + folder.ACCEPT_HELP)
    p.set_defaults(run=run, parser=p)


def run(args) -> int:
    """``train``: fit the run's model to its data set, one table row per epoch; the exit code. The run folder is
    locked (``funcvae._runtime.lock``) for the whole command, before a resumed run's folder is read: two commands on one
    folder at once would both rewrite history.jsonl."""
    if args.resume is None:
        return _train(args, None, *_new_run(args), done=[])
    run_dir = Path(args.resume)
    if not (run_dir / folder.CONFIG).is_file():
        args.parser.error(f"--resume {run_dir}: no config.json there (not a run folder)")
    with lock.hold(run_dir):
        return _train(args, run_dir, *_resumed(args, run_dir))


def _train(args, run_dir: Path | None, config: dict, model: funcvae.Model, done: list[dict]) -> int:
    """Load the data, make the new run's folder (``run_dir`` None) or record a resumed run's new ``--epochs``,
    then fit under the folder's lock; the exit code. The images are loaded as their 8-bit levels, which fit
    holds as they are and divides by 255 (static binarisation: 1) inside the step: the values trained on, and
    the data's fingerprint in the checkpoint, are those of the float32 images runs were trained on before."""
    settings = config["fit"]
    static = "static" if config["binarize"] == "static" else None
    x_train, x_test = (funcvae.data.load(config["dataset"], split, root=args.data_root, binarize=static,
                                         seed=settings["seed"], pixels="uint8") for split in ("train", "test"))
    check_data(args, model, x_train, settings["batch_size"])
    contexts = {}
    if model.context is not None:  # a conditional model reads the dataset's labels
        contexts = {key: funcvae.data.labels(config["dataset"], split, root=args.data_root)
                    for key, split in (("context", "train"), ("val_context", "test"))}
    params = model.init(settings["seed"])
    (objective,), (optimizer,) = shorthand.build(settings, steps_per_epoch(x_train.shape[0], settings["batch_size"]))
    if run_dir is None:
        config.update(n_train=int(x_train.shape[0]), n_test=int(x_test.shape[0]))
        run_dir = runs.create(Path(args.out), f"{config['dataset']}-{model_name(model, config)}-"
                                              f"seed{settings['seed']}", config)
    elif args.epochs is not None:
        folder.write_config(run_dir, config)
    with lock.hold(run_dir):  # a resumed run's is held already: this holds it once more
        print(f"run folder: {run_dir}")
        print(f"{params}; {objective.name}; {optimizer.name}; {x_train.shape[0]} train / {x_test.shape[0]} "
              "held-out examples; nats per example")
        print(format_header())
        for record in done:
            print(format_row(record))
        fit_config = funcvae.FitConfig(**fit_fields(settings), scale=1 if static else 255, checkpoint_dir=str(run_dir),
                                       resume=True, progress=False if args.quiet else None,
                                       accept_changed_code=args.accept_changed_code)
        return _fit(run_dir, done, params, x_train, val_data=x_test, objective=objective, optimizer=optimizer,
                    config=fit_config, **contexts)


def _new_run(args) -> tuple[dict, funcvae.Model]:
    """The config and model of a new run from the arguments, checked before any work (the folder comes later)."""
    settings = dict(epochs=10 if args.epochs is None else args.epochs, batch_size=args.batch_size, seed=args.seed,
                    binarize="dynamic" if args.binarize == "dynamic" else None,
                    compile=False if args.no_compile else None, checkpoint_every=args.checkpoint_every,
                    on_nonfinite=args.on_nonfinite, matmul_dtype="bfloat16" if args.bf16 else None,
                    **objective_settings(args), **optimizer_settings(args))
    check_settings(args, None, settings, [settings])  # the options alone, before the model file is run
    model, described = model_of(args)
    check_settings(args, model, settings, [settings])
    return {"dataset": args.dataset, "binarize": args.binarize, **described, "fit": settings}, model


def _resumed(args, run_dir: Path) -> tuple[dict, funcvae.Model, list[dict]]:
    """The config (``--epochs`` applied, not yet written), model and history so far of ``--resume RUN``, checked
    before anything is written: an option that would change the run is a usage error (one equal to what the
    run recorded changes nothing, and is taken), and so is ``--epochs`` below the epochs already trained."""
    config = folder.read_config(run_dir)
    changed = _changed_options(args, config, run_dir)
    if changed:
        args.parser.error(f"--resume continues {run_dir} with the settings of its config.json; {', '.join(changed)} "
                          "would change them (start a new run instead)")
    model = recorded_model(args, config, run_dir / folder.CONFIG)
    done, trained = _progress(run_dir, model, args.accept_changed_code)
    settings = config["fit"]
    if args.epochs is not None:
        if args.epochs < trained:
            args.parser.error(f"--epochs {args.epochs}: {run_dir} has trained {_epochs(trained)} already (its "
                              "checkpoint); --epochs extends a run, it cannot shorten one")
        settings["epochs"] = args.epochs
    elif settings["epochs"] < trained:
        raise folder.RunError(f"{run_dir / folder.CONFIG}: fit.epochs is {settings['epochs']}, fewer than the "
                              f"{_epochs(trained)} its checkpoint has trained")
    problem = settings_problem(model, settings, [settings])
    if problem:
        raise folder.RunError(f"{run_dir / folder.CONFIG}: {problem}")
    return config, model, done


def _changed_options(args, config: dict, run_dir: Path) -> list[str]:
    """The options given with ``--resume`` (whatever their values: ``options.given``) that differ from what
    the run recorded, as flags. ``--out`` is the same when it names RUN's parent folder; an option
    ``_recorded_options`` does not know is taken as a change."""
    recorded = _recorded_options(config, run_dir)
    out = []
    for dest in given(args, "train"):
        value = getattr(args, dest)
        value = absolute(value) if dest == "model" else Path(value).resolve() if dest == "out" else value
        if dest not in RESUMABLE and recorded.get(dest, _UNKNOWN) != value:
            out.append(f"--{dest.replace('_', '-')}")
    return out


def _recorded_options(config: dict, run_dir: Path) -> dict:
    """What each option (by ``dest``) would have been to describe the run config.json records."""
    fit, spec = config["fit"], config["model"] or {}
    return {**{name: spec.get(name) for name in BUILT_IN}, **{name: fit[name] for name in AS_RECORDED},
            "dataset": config["dataset"], "binarize": config["binarize"], "model": config["model_file"],
            "no_compile": fit["compile"] is False, "bf16": fit["matmul_dtype"] == "bfloat16",
            "out": run_dir.resolve().parent}


def _progress(run_dir: Path, model: funcvae.Model, accept_changed_code: bool) -> tuple[list[dict], int]:
    """The epochs the run folder's checkpoint holds (history.jsonl is rewritten from them: a line written after
    the last checkpoint belongs to an epoch that will be trained again), and the epochs it has trained, one
    begun counted. Without a checkpoint the run starts afresh, which loses nothing only when nothing of a
    trained epoch is there: RunError when history.jsonl holds a line or params.safetensors exists."""
    path = run_dir / funcvae.CHECKPOINT_FILE
    if path.is_file():
        checkpoint, history = folder.read_checkpoint(path, model, accept_changed_code)
        return history, checkpoint.epoch + (checkpoint.step > 0)
    log = run_dir / folder.HISTORY
    lines = sum(1 for line in log.read_bytes().splitlines() if line.strip()) if log.is_file() else 0
    kept = ([f"{folder.HISTORY} is not empty"] if lines else []) + (
        [f"{folder.PARAMS} is there"] if (run_dir / folder.PARAMS).is_file() else [])
    if kept:
        raise folder.RunError(f"--resume {run_dir}: there is no {funcvae.CHECKPOINT_FILE} to continue from, but "
                              f"{' and '.join(kept)}; resuming would train again from scratch over them "
                              "(start a new run instead)")
    return [], 0


def _epochs(trained: int) -> str:
    return f"{trained} epoch{'s' if trained != 1 else ''}"


def _fit(run_dir: Path, done: list[dict], params: funcvae.Params, x_train, **fit_args) -> int:
    """``funcvae.fit``, each epoch printed and appended to history.jsonl (rewritten from ``done``), then the
    params saved; the exit code. An interrupt, a non-finite loss or a bad input is a message, not a traceback.
    fit checks its inputs (settings, data, checkpoint) before its first step, so a ValueError before the first
    epoch is over is a bad input: one line, exit 2; after it, it is a bug and keeps its traceback. Any other
    exception is a bug too (a folder that another run holds, ``lock.FolderLocked``, is main's to report)."""
    with open(run_dir / folder.HISTORY, "w") as log:
        log.writelines(records.dumps(r) + "\n" for r in done)
        ended = []

        def on_epoch(record: dict) -> None:
            ended.append(record["epoch"])
            log.write(records.dumps(record) + "\n")
            log.flush()
            print(format_row(record), flush=True)

        try:
            params, _ = funcvae.fit(params, x_train, callbacks=[on_epoch], **fit_args)
        except funcvae.Interrupted as e:
            print(f"{e}\ncontinue with: python -m funcvae train --resume {run_dir}", file=sys.stderr)
            return 128 + e.signum
        except funcvae.NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            if ended:
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
    funcvae.save_params(run_dir / folder.PARAMS, params)
    print(f"saved {run_dir / folder.PARAMS}, {funcvae.CHECKPOINT_FILE}, config.json, history.jsonl")
    return 0


def format_header() -> str:
    """The header of train's table: the column names."""
    return " | ".join(COLUMNS)


def format_row(record: dict) -> str:
    """One table row; each value right-aligned under its column heading."""
    cells = []
    for column, key in zip(COLUMNS, KEYS):
        value = record[key]
        text = str(value) if key == "epoch" else "-" if value is None else f"{value:.1f}" if key == "seconds" \
            else f"{value:.2f}"
        cells.append(text.rjust(len(column)))
    groups = record.get("val_kl_groups") or record.get("kl_groups")
    by_group = "" if not groups else "  KL by group " + ", ".join(f"{g} {v:.2f}" for g, v in groups.items())
    return " | ".join(cells) + by_group
