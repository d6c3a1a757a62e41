"""``sweep``: the rate-distortion-perception curve, one model per KL weight of the ELBO, all trained in one
stacked fit, each scored by its rate, distortion and the FID of its prior samples; its table goes to sweep.json
beside the curves' picture."""

from __future__ import annotations

import time
from pathlib import Path

import funcvae
import funcvae.sweep
from funcvae import quality, shorthand
from funcvae._runtime import records
from funcvae.cli import runs
from funcvae.cli.model import model_of
from funcvae.cli.options import (add_common_options, add_model_options, at_least, check_data, check_settings, command,
                                 optimizer_settings)

#: The sweep's settings that ``funcvae.sweep.rate_distortion`` takes as they are (the others build the optimiser).
SWEEP_FIELDS = ("betas", "epochs", "seed", "batch_size", "compile", "free_bits")


def add_parser(sub) -> None:
    """``sweep``: the shared model and common options, ``--betas`` and ``--epochs``."""
    p, g = command(sub, "sweep", "rate-distortion: one model per KL weight (of the ELBO), one stacked fit")
    add_model_options(g)
    add_common_options(g)
    g["objective"].add_argument("--betas", default=[0.1, 0.5, 1.0, 2.0, 4.0, 8.0], type=float, nargs="+",
                                help="KL weights")
    g["optimiser"].add_argument("--epochs", default=10, type=at_least(1), help="epochs of each model")
    p.set_defaults(run=run, parser=p)


def run(args) -> int:
    """``sweep``: train one model per KL weight, print and save the table and the curve; the exit code."""
    model, described, settings = _sweep_config(args)
    # 8-bit levels, held so by fit and divided by 255 inside its step (exactly the float32 images' values).
    x_train = funcvae.data.load(args.dataset, "train", root=args.data_root, pixels="uint8")
    x_test = funcvae.data.load(args.dataset, "test", root=args.data_root, pixels="uint8")
    check_data(args, model, x_train, args.batch_size)
    params = model.init(args.seed)
    config = {"dataset": args.dataset, **described, "fit": settings, "n_train": int(x_train.shape[0]),
              "n_test": int(x_test.shape[0])}
    run_dir = runs.create(Path(args.out), f"sweep-{args.dataset}", config)
    (optimizer,) = shorthand.build(settings).optimizers
    print(f"run folder: {run_dir}")
    print(f"{params}, {len(settings['betas'])} KL weights in one stacked fit; {optimizer.name}; {x_train.shape[0]} "
          f"train / {x_test.shape[0]} held-out examples; nats per example, held-out")
    began = time.perf_counter()
    rows = funcvae.sweep.rate_distortion(params, x_train, val_data=x_test, scale=255,
                                         progress=False if args.quiet else None, optimizer=optimizer,
                                         network=args.dataset if args.dataset in quality.network.NETWORKS else None,
                                         **{k: settings[k] for k in SWEEP_FIELDS})
    print(funcvae.sweep.format_table(rows))
    print(f"trained {len(rows)} models in {time.perf_counter() - began:.1f} s")
    (run_dir / "sweep.json").write_text(records.dumps({**config, "rows": rows}, indent=2) + "\n")
    plot = funcvae.sweep.rate_distortion_plot(rows, run_dir / "rate_distortion.png")
    print(f"wrote {run_dir / 'sweep.json'}, {plot}")
    return 0


def _sweep_config(args) -> tuple[funcvae.Model, dict, dict]:
    """The model, what config.json records of it, and the sweep's settings, checked before any work."""
    model, described = model_of(args, input_shape=funcvae.data.INPUT_SHAPES[args.dataset])
    try:
        betas = funcvae.sweep.check_betas(args.betas)
    except ValueError as e:
        args.parser.error(str(e))
    settings = dict(betas=betas, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                    compile=False if args.no_compile else None, free_bits=args.free_bits, **optimizer_settings(args))
    check_settings(args, model, settings, [dict(objective="elbo", beta=b, kl_warmup=0.0, free_bits=args.free_bits)
                                           for b in betas])
    return model, described, settings
