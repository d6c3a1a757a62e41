"""``train``: a new run from the options, or ``--resume RUN`` with the settings of its config.json; prints a
table row per epoch and keeps the run folder's history.jsonl, checkpoint and params."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import torch

import funcvae
from funcvae import shorthand
from funcvae._runtime import lock, records
from funcvae.cli import folder, own_data, runs
from funcvae.cli.model import BUILT_IN, absolute, model_name, model_of, recorded_model
from funcvae.cli.options import (add_model_options, at_least, check_data, check_settings, command, fit_fields, given,
                                 objective_settings, optimizer_settings, settings_problem)
from funcvae.config import steps_per_epoch
from funcvae.shorthand import OBJECTIVES

COLUMNS = ("Epoch", "Reconstruction Loss", "KL Divergence", "Total ELBO Loss", "Val Recon", "Val KL",
           "Val Total", "s")
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")
#: The options --resume takes as they come: how far to train, where the data are, the progress bar, logging.
RESUMABLE = frozenset({"epochs", "data_root", "quiet", "resume", "accept_changed_code", "tensorboard", "data",
                       "val_data"})
#: The folder of a run folder that --tensorboard writes its event files in; the held-out images it shows.
TENSORBOARD, TENSORBOARD_IMAGES = "tensorboard", 16
#: The options config.json's "fit" records under their own names (mmd_weight for --objective mmd only).
AS_RECORDED = ("batch_size", "seed", "lr", "beta", "kl_warmup", "objective", "k", "free_bits", "mmd_weight",
               "optimizer", "momentum", "weight_decay", "checkpoint_every", "on_nonfinite")
_UNKNOWN = object()


def add_parser(sub) -> None:
    """``train``: the shared model options, the objective's, and those of the run itself."""
    p, g = command(sub, "train", "train a VAE on real images and save the run")
    add_model_options(g)
    o, d, r = g["objective"], g["data"], g["run"]
    o.add_argument("--objective", default=None, choices=OBJECTIVES,
                   help="elbo (default): the beta-ELBO; iwae: the importance-weighted bound of --k samples; "
                        "beta-tcvae: --beta on the total correlation, estimated over each batch; mmd: InfoVAE's "
                        "MMD-VAE, the reconstruction and --mmd-weight times the MMD between q(z) and the prior")
    o.add_argument("--k", default=None, type=at_least(1), help="iwae only: importance samples per example (default: 5)")
    o.add_argument("--beta", default=None, type=float,
                   help="elbo: the KL weight; beta-tcvae: the total correlation's (default: 1)")
    o.add_argument("--mmd-weight", default=None, type=float,
                   help=f"mmd only: the MMD's weight (default: {shorthand.DEFAULTS['mmd_weight']:g}, InfoVAE's lambda)")
    o.add_argument("--kl-warmup", default=None, type=float, help="elbo only: epochs of linear KL warm-up (default: 0)")
    d.add_argument("--data-root", default=None,
                   help="folder to look in first, and to download into (default: the system's, then a cache folder)")
    d.add_argument("--data", default=None, metavar="PATH",
                   help="images of your own instead of --dataset: a folder (path/<class>/<file> or path/<file>), a "
                        ".npy or a .npz (x, and y for --context); the model takes their shape (default: --dataset)")
    d.add_argument("--val-data", default=None, metavar="PATH",
                   help="with --data: held-out images, scored every epoch and by eval (default: none; eval then "
                        "scores the training images)")
    d.add_argument("--binarize", default=None, choices=["static", "dynamic"],
                   help="static: one fixed Bernoulli draw per pixel; dynamic: a fresh one every batch (default: grey "
                        "levels as they are)")
    g["optimiser"].add_argument("--epochs", default=None, type=at_least(1),
                                help="default 10; with --resume, extends the run")
    r.add_argument("--seed", default=0, type=at_least(0), help="names every random draw")
    r.add_argument("--checkpoint-every", default=None, type=at_least(1), metavar="STEPS",
                   help="checkpoint inside epochs too (default: after each epoch, and on Ctrl-C / SIGTERM)")
    r.add_argument("--on-nonfinite", default="raise", choices=["raise", "skip"],
                   help="a step with a non-finite loss or gradient: stop the run, or skip the step")
    r.add_argument("--bf16", action="store_true",
                   help="matrix products in bfloat16, everything else in float32 (mixed precision)")
    r.add_argument("--resume", default=None, metavar="RUN",
                   help="continue the run in this run folder with the settings of its config.json (only "
                        "--epochs may change: it extends the run; --data-root and --quiet are taken too, and --data, "
                        "--val-data naming the same images elsewhere) (default: a new run)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--accept-changed-code", action="store_true", help="with --resume: " + folder.ACCEPT_HELP)
    r.add_argument("--tensorboard", action="store_true",
                   help=f"write TensorBoard event files in RUN/{TENSORBOARD}: the history, images and config.json's "
                        "settings (needs pip install 'funcvae[tensorboard]')")
    p.set_defaults(run=run, parser=p)


def run(args) -> int:
    """``train``: fit the run's model to its data set, one table row per epoch; the exit code. The run folder is
    locked (``funcvae._runtime.lock``) for the whole command, before a resumed run's folder is read: two commands on one
    folder at once would both rewrite history.jsonl."""
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        args.parser.error("--tensorboard needs the tensorboard package: pip install 'funcvae[tensorboard]'")
    if args.resume is None:
        config, model, loaded = _new_run(args)
        return _train(args, None, config, model, done=[], loaded=loaded)
    run_dir = Path(args.resume)
    if not (run_dir / folder.CONFIG).is_file():
        args.parser.error(f"--resume {run_dir}: no config.json there (not a run folder)")
    with lock.hold(run_dir):
        return _train(args, run_dir, *_resumed(args, run_dir))


def _train(args, run_dir: Path | None, config: dict, model: funcvae.Model, done: list[dict],
           loaded: tuple | None = None) -> int:
    """Load the data (a new ``--data`` run's are ``loaded`` already: ``_own_data``), make the new run's folder
    (``run_dir`` None) or record a resumed run's new ``--epochs``, then fit under the folder's lock; the exit
    code. A data set's images are loaded as their 8-bit levels, which fit holds as they are and divides by 255
    (static binarisation: 1) inside the step: the values trained on, and the data's fingerprint in the
    checkpoint, are those of the float32 images runs were trained on before."""
    settings = config["fit"]
    x_train, x_test, contexts, scale = loaded or _data(args, run_dir, config, model)
    check_data(args, model, x_train, settings["batch_size"])
    params = model.init(settings["seed"])
    (objective,), (optimizer,) = shorthand.build(settings, steps_per_epoch(x_train.shape[0], settings["batch_size"]),
                                                 examples=int(x_train.shape[0]))
    if run_dir is None:
        config.update(n_train=int(x_train.shape[0]), n_test=None if x_test is None else int(x_test.shape[0]))
        run_dir = runs.create(Path(args.out), f"{_data_name(config)}-{model_name(model, config)}-"
                                              f"seed{settings['seed']}", config)
    elif args.epochs is not None:
        folder.write_config(run_dir, config)
    with lock.hold(run_dir):  # a resumed run's is held already: this holds it once more
        print(f"run folder: {run_dir}")
        print(f"{params}; {objective.name}; {optimizer.name}; {x_train.shape[0]} train / "
              f"{'no' if x_test is None else x_test.shape[0]} held-out examples; nats per example")
        print(format_header())
        for record in done:
            print(format_row(record))
        fit_config = funcvae.FitConfig(**fit_fields(settings), scale=scale, checkpoint_dir=str(run_dir),
                                       resume=True, progress=False if args.quiet else None,
                                       accept_changed_code=args.accept_changed_code)
        shown = x_train if x_test is None else x_test  # a --data run without --val-data shows training images
        loggers = [_tensorboard(run_dir, config, shown, fit_config.scale, contexts)] if args.tensorboard else []
        return _fit(run_dir, done, params, x_train, loggers, val_data=x_test, objective=objective,
                    optimizer=optimizer, config=fit_config, **contexts)


def _tensorboard(run_dir: Path, config: dict, x_test, scale: int, contexts: dict):
    """The --tensorboard logger: config.json's settings as its hparams, and the first held-out images, as the
    run trains on their levels (divided by ``scale`` in float64), as its fixed examples."""
    c = contexts.get("val_context", contexts.get("context"))
    first = torch.tensor(np.asarray(x_test[:TENSORBOARD_IMAGES]))  # a copy: a memory map's rows are read-only
    images = (first.double() / (scale or 1)).float()  # --data of floats: no scale
    return funcvae.callbacks.tensorboard(run_dir / TENSORBOARD, images=images, hparams=config,
                                         context=None if c is None else c[:TENSORBOARD_IMAGES])


def _new_run(args) -> tuple[dict, funcvae.Model, tuple | None]:
    """The config and model of a new run from the arguments, checked before any work (the folder comes later),
    and a ``--data`` run's data (``_own_data``; None for a data set, loaded later). A built-in model takes the
    shape of ``--data``, so those are read first; a model file is checked before any data are read."""
    settings = dict(epochs=10 if args.epochs is None else args.epochs, batch_size=args.batch_size, seed=args.seed,
                    binarize="dynamic" if args.binarize == "dynamic" else None,
                    compile=False if args.no_compile else None, checkpoint_every=args.checkpoint_every,
                    on_nonfinite=args.on_nonfinite, matmul_dtype="bfloat16" if args.bf16 else None,
                    **objective_settings(args), **optimizer_settings(args))
    check_settings(args, None, settings, [settings])  # the options alone, before the model file is run
    if args.data is None:
        if args.val_data is not None:
            args.parser.error("--val-data is the held-out set of --data; a --dataset brings its own")
        model, described = model_of(args, input_shape=funcvae.data.INPUT_SHAPES[args.dataset])
        check_settings(args, model, settings, [settings])
        return {"dataset": args.dataset, "binarize": args.binarize, "data": None, **described, "fit": settings}, model, None
    if "dataset" in given(args, "train"):
        args.parser.error(f"--data {args.data} and --dataset {args.dataset} both name the training images; give one")
    if args.binarize == "static":
        args.parser.error("--binarize static is a data set's fixed draw; with --data use --binarize dynamic")
    model, described = model_of(args) if args.model is not None else (None, None)
    config = {"dataset": None, "binarize": args.binarize, "data": None, "fit": settings}
    loaded = _own_data(args, None, config, labelled=(args.context if model is None else model.context) is not None)
    if model is None:
        model, described = model_of(args, input_shape=tuple(loaded[0].shape[1:]))
    check_settings(args, model, settings, [settings])
    return {**config, **described}, model, loaded


def _data(args, run_dir: Path, config: dict, model: funcvae.Model) -> tuple:
    """The run's ``(x_train, x_held_out or None, contexts, scale)``: a data set's 8-bit levels (and its labels for a
    conditional model), or a resumed ``--data`` run's files (``_own_data``)."""
    if config.get("data") is not None:
        return _own_data(args, run_dir, config, labelled=model.context is not None)
    if args.data is not None or args.val_data is not None:
        args.parser.error(f"--resume {run_dir}: the run trained on the data set {config['dataset']}, not on files "
                          f"(--data, --val-data)")
    static = "static" if config["binarize"] == "static" else None
    x_train, x_test = (funcvae.data.load(config["dataset"], split, root=args.data_root, binarize=static,
                                         seed=config["fit"]["seed"], pixels="uint8") for split in ("train", "test"))
    contexts = {}
    if model.context is not None:  # a conditional model reads the dataset's labels
        contexts = {key: funcvae.data.labels(config["dataset"], split, root=args.data_root)
                    for key, split in (("context", "train"), ("val_context", "test"))}
    return x_train, x_test, contexts, 1 if static else 255


def _own_data(args, run_dir: Path | None, config: dict, labelled: bool) -> tuple:
    """A ``--data`` run's ``(x_train, x_val or None, contexts, scale)``, as ``own_data.read`` gives them, with their
    labels as contexts when ``labelled``. A new run (``run_dir`` None) reads ``--data`` and ``--val-data`` and
    records them in ``config["data"]``. A resumed one reads them where given (the data moved: the new path is
    recorded), else where config.json says, and is refused unless they hold the data recorded (a usage error
    naming both digests): a checkpoint's steps continue only on the data they were taken on."""
    recorded, found, kept, contexts = config["data"], {}, {"train": None, "val": None}, {}
    for split, flag, key in (("train", "--data", "context"), ("val", "--val-data", "val_context")):
        path = getattr(args, flag[2:].replace("-", "_"))
        if recorded is not None and recorded[split] is None and path is not None:
            args.parser.error(f"{flag} {path}: {run_dir} was trained without held-out data; resume it without {flag}")
        if recorded is not None and recorded[split] is not None:
            path = recorded[split]["path"] if path is None else path
        if path is None:
            found[split] = None
            continue
        try:
            found[split], y = own_data.read(path, labels=labelled)
        except (OSError, ValueError) as e:
            args.parser.error(f"{flag}: {e}")
        if y is not None:
            contexts[key] = y
        kept[split] = own_data.record(path, found[split])
        problem = None if recorded is None else own_data.difference(recorded[split], kept[split])
        if problem:
            args.parser.error(f"--resume {run_dir}: {problem}; a run continues on the data it trained on")
    scale = own_data.scale(found["train"])
    if found["val"] is not None and own_data.scale(found["val"]) != scale:
        args.parser.error(f"--val-data holds {found['val'].dtype} and --data {found['train'].dtype}: both must be "
                          "integer levels, or both values")
    config["data"] = kept
    if recorded is not None and kept != recorded:  # the same data, moved: config.json says where they are now
        folder.write_config(run_dir, config)
    return found["train"], found["val"], contexts, scale


def _data_name(config: dict) -> str:
    """A run folder's name for its data: the data set's, or the name of the --data folder or file."""
    if config.get("data") is None:
        return config["dataset"]
    return re.sub(r"[^\w.-]", "_", Path(config["data"]["train"]["path"]).stem)


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
    return {**{name: spec.get(name) for name in BUILT_IN}, **{name: fit.get(name) for name in AS_RECORDED},
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


def _fit(run_dir: Path, done: list[dict], params: funcvae.Params, x_train, loggers: list, **fit_args) -> int:
    """``funcvae.fit``, each epoch printed and appended to history.jsonl (rewritten from ``done``) and passed to
    ``loggers`` (callbacks), then the params saved; the exit code. An interrupt, a non-finite loss or a bad input is a message, not a traceback.
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
            params, _ = funcvae.fit(params, x_train, callbacks=[on_epoch, *loggers], **fit_args)
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
