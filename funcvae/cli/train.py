"""``train``: a new run from the options, or ``--resume RUN`` with the settings of its config.json; prints a
table row per epoch and keeps the run folder's history.jsonl, checkpoint and params."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import funcvae
from funcvae.cli import runs
from funcvae.cli.model import model_name, model_of, recorded_model
from funcvae.cli.options import (OBJECTIVES, check_data, check_settings, fit_fields, objective_of, objective_settings,
                                 optimizer_of, optimizer_settings)
from funcvae.config import steps_per_epoch

COLUMNS = ("Epoch", "Reconstruction Loss", "KL Divergence", "Total ELBO Loss", "Val Recon", "Val KL",
           "Val Total", "s")
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")


def add_parser(sub, model: argparse.ArgumentParser) -> None:
    """``train``: the shared ``model`` options, the objective's, and those of the run itself."""
    p = sub.add_parser("train", parents=[model], help="train a VAE on real images and save the run")
    p.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="elbo (default): the beta-ELBO; iwae: the importance-weighted bound of --k samples")
    p.add_argument("--k", default=None, type=int, help="iwae only: importance samples per example (default: 5)")
    p.add_argument("--beta", default=None, type=float, help="elbo only: the KL weight (default: 1)")
    p.add_argument("--kl-warmup", default=None, type=float, help="elbo only: epochs of linear KL warm-up")
    p.add_argument("--data-root", default=None, help="folder to look in first (and download into)")
    p.add_argument("--binarize", default=None, choices=["static", "dynamic"])
    p.add_argument("--epochs", default=None, type=int, help="default 10; with --resume, extends the run")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--checkpoint-every", default=None, type=int, metavar="STEPS",
                   help="checkpoint inside epochs too (always: after each epoch, and on Ctrl-C / SIGTERM)")
    p.add_argument("--on-nonfinite", default="raise", choices=["raise", "skip"])
    p.add_argument("--bf16", action="store_true",
                   help="matrix products in bfloat16, everything else in float32 (mixed precision)")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in this run folder with the settings of its config.json (only "
                        "--epochs may change: it extends the run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run, parser=p)


def run(args) -> int:
    """``train``: fit the run's model to its data set, one table row per epoch; the exit code."""
    run_dir, config, model = _resumed(args) if args.resume else _new_run(args)
    settings = config["fit"]
    static = "static" if config["binarize"] == "static" else None
    x_train, x_test = (funcvae.data.load(config["dataset"], split, root=args.data_root, binarize=static,
                                         seed=settings["seed"]) for split in ("train", "test"))
    check_data(args, model, x_train, settings["batch_size"])
    params = model.init(settings["seed"])
    objective = objective_of(settings, steps_per_epoch(x_train.shape[0], settings["batch_size"]))
    optimizer = optimizer_of(settings)
    if run_dir is None:
        config.update(n_train=int(x_train.shape[0]), n_test=int(x_test.shape[0]))
        run_dir = runs.create(Path(args.out), f"{config['dataset']}-{model_name(model, config)}-"
                                              f"seed{settings['seed']}", config)
    print(f"run folder: {run_dir}")
    print(f"{params}; {objective.name}; {optimizer.name}; {x_train.shape[0]} train / {x_test.shape[0]} held-out "
          "examples; nats per example")
    print(format_header())
    done = _history_so_far(run_dir, model)
    for record in done:
        print(format_row(record))
    fit_config = funcvae.FitConfig(**fit_fields(settings), checkpoint_dir=str(run_dir), resume=True,
                                   progress=False if args.quiet else None)
    return _fit(run_dir, done, params, x_train, val_data=x_test, objective=objective, optimizer=optimizer,
                config=fit_config)


def _new_run(args) -> tuple[None, dict, funcvae.Model]:
    """The config and model of a new run from the arguments, checked before any work (the folder comes later)."""
    model, described = model_of(args)
    settings = dict(epochs=10 if args.epochs is None else args.epochs, batch_size=args.batch_size, seed=args.seed,
                    binarize="dynamic" if args.binarize == "dynamic" else None,
                    compile=False if args.no_compile else None, checkpoint_every=args.checkpoint_every,
                    on_nonfinite=args.on_nonfinite, matmul_dtype="bfloat16" if args.bf16 else None,
                    **objective_settings(args), **optimizer_settings(args))
    check_settings(args, model, settings, [settings])
    return None, {"dataset": args.dataset, "binarize": args.binarize, **described, "fit": settings}, model


def _resumed(args) -> tuple[Path, dict, funcvae.Model]:
    """The run folder, config and model of ``--resume RUN``; ``--epochs`` may extend it."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.json").is_file():
        args.parser.error(f"--resume {run_dir}: no config.json there (not a run folder)")
    kept = {"epochs", "resume", "quiet", "data_root", "run", "parser"}
    changed = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k not in kept and v != args.parser.get_default(k)]
    if changed:
        args.parser.error(f"--resume continues {run_dir} with the settings of its config.json; {', '.join(changed)} "
                          "would change them (start a new run instead)")
    config = json.loads((run_dir / "config.json").read_text())
    model = recorded_model(args, config)
    if args.epochs is not None:
        config["fit"]["epochs"] = args.epochs
        check_settings(args, model, config["fit"], [config["fit"]])
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir, config, model


def _history_so_far(run_dir: Path, model: funcvae.Model) -> list[dict]:
    """The epochs the run folder's checkpoint holds (history.jsonl is rewritten from them: a line written
    after the last checkpoint belongs to an epoch that will be trained again)."""
    path = run_dir / funcvae.CHECKPOINT_FILE
    return funcvae.load(path, model=model).history[0] if path.is_file() else []


def _fit(run_dir: Path, done: list[dict], params: funcvae.Params, x_train, **fit_args) -> int:
    """``funcvae.fit``, each epoch printed and appended to history.jsonl (rewritten from ``done``), then the
    params saved; the exit code. An interrupt, a non-finite loss or a refused resume is a message, not a
    traceback."""
    with open(run_dir / "history.jsonl", "w") as log:
        log.writelines(json.dumps(r) + "\n" for r in done)

        def on_epoch(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(format_row(record), flush=True)

        try:
            params, _ = funcvae.fit(params, x_train, callback=on_epoch, **fit_args)
        except funcvae.Interrupted as e:
            print(f"{e}\ncontinue with: python -m funcvae train --resume {run_dir}", file=sys.stderr)
            return 128 + e.signum
        except funcvae.NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except ValueError as e:  # the checkpoint was made with other settings or data than config.json's
            if not str(e).startswith("cannot resume from"):
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2
    funcvae.save_params(run_dir / "params.safetensors", params)
    print(f"saved {run_dir / 'params.safetensors'}, {funcvae.CHECKPOINT_FILE}, config.json, history.jsonl")
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
    return " | ".join(cells)
