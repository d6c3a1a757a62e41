"""``python -m funcvae train``: parse arguments, call the library, print the epoch table, save the run."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import funcvae
from funcvae.model import ARCHS, LIKELIHOODS
from funcvae.train import check_settings

COLUMNS = ("Epoch", "Reconstruction Loss", "KL Divergence", "Total ELBO Loss", "Val Recon", "Val KL",
           "Val Total", "s")
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m funcvae", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train a VAE on real images and save the run")
    train.add_argument("--dataset", default="fashion-mnist", choices=sorted(funcvae.data.DATASETS))
    train.add_argument("--data-root", default=None, help="folder to look in first (and download into)")
    train.add_argument("--binarize", default=None, choices=["static", "dynamic"])
    train.add_argument("--arch", default="mlp", choices=ARCHS)
    train.add_argument("--hidden", default=[400], type=int, nargs="*", help="hidden sizes (default: 400)")
    train.add_argument("--latent", default=20, type=int)
    train.add_argument("--activation", default="relu", choices=sorted(funcvae.nn.ACTIVATIONS))
    train.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS)
    train.add_argument("--obs-std", default=None, type=float, help="gaussian: fixed std (default: learned)")
    train.add_argument("--epochs", default=10, type=int)
    train.add_argument("--batch-size", default=128, type=int)
    train.add_argument("--lr", default=1e-3, type=float)
    train.add_argument("--beta", default=1.0, type=float)
    train.add_argument("--kl-warmup", default=0, type=float, help="epochs of linear KL warm-up")
    train.add_argument("--seed", default=0, type=int)
    train.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    train.add_argument("--no-compile", action="store_true", help="run the eager step (no torch.compile)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train, parser=train)
    return parser


def _train(args) -> int:
    model = dict(arch=args.arch, hidden=tuple(args.hidden), latent=args.latent, activation=args.activation,
                 likelihood=args.likelihood, obs_std=args.obs_std)
    settings = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, beta=args.beta,
                    kl_warmup=args.kl_warmup, binarize="dynamic" if args.binarize == "dynamic" else None,
                    compile=False if args.no_compile else None)
    try:  # every check before any work, and before a run folder exists
        check_settings(**{k: v for k, v in settings.items() if k not in ("seed", "compile")})
        params = funcvae.init(seed=args.seed, **model)
    except ValueError as e:
        args.parser.error(str(e))
    static = "static" if args.binarize == "static" else None
    x_train = funcvae.data.load(args.dataset, "train", root=args.data_root, binarize=static, seed=args.seed)
    x_test = funcvae.data.load(args.dataset, "test", root=args.data_root, binarize=static, seed=args.seed)
    if args.batch_size > x_train.shape[0]:
        args.parser.error(f"--batch-size {args.batch_size} is larger than the data ({x_train.shape[0]} examples)")
    run_dir = _new_run_dir(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-{args.dataset}-{args.arch}-seed{args.seed}")
    config = {"dataset": args.dataset, "binarize": args.binarize, "model": params.spec.to_dict(), "fit": settings,
              "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0])}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"run folder: {run_dir}")
    print(f"{params}; {x_train.shape[0]} train / {x_test.shape[0]} held-out examples; nats per example")
    print(format_header())
    with open(run_dir / "history.jsonl", "w") as log:
        def on_epoch(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(format_row(record), flush=True)

        params, _ = funcvae.fit(params, x_train, val_data=x_test, progress=False if args.quiet else None,
                                callback=on_epoch, **settings)
    funcvae.save_params(run_dir / "params.safetensors", params)
    print(f"saved {run_dir / 'params.safetensors'}, config.json, history.jsonl")
    return 0


def _new_run_dir(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``, ... when runs start in the same second."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in itertools.count(1):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def format_header() -> str:
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


if __name__ == "__main__":
    sys.exit(main())
