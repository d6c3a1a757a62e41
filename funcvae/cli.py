"""``python -m funcvae train | eval | sample | sweep``: parse arguments, call the library, print a table, save
the run (each command's numbers also go to a JSON file beside its pictures)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import funcvae
import funcvae.sweep
from funcvae import diagnostics, iwae, pictures
from funcvae.model import ARCHS, LIKELIHOODS
from funcvae.interrupt import Interrupted
from funcvae.train import CHECKPOINT_FILE, NonFiniteError, check_settings, held_out_sets

COLUMNS = ("Epoch", "Reconstruction Loss", "KL Divergence", "Total ELBO Loss", "Val Recon", "Val KL",
           "Val Total", "s")
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The compiler's note that a CPU-only machine has no CUDA runtime would land in the middle of the table.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m funcvae", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    model = _model_options()
    train = sub.add_parser("train", parents=[model], help="train a VAE on real images and save the run")
    train.add_argument("--data-root", default=None, help="folder to look in first (and download into)")
    train.add_argument("--binarize", default=None, choices=["static", "dynamic"])
    train.add_argument("--epochs", default=None, type=int, help="default 10; with --resume, extends the run")
    train.add_argument("--beta", default=1.0, type=float)
    train.add_argument("--kl-warmup", default=0, type=float, help="epochs of linear KL warm-up")
    train.add_argument("--seed", default=0, type=int)
    train.add_argument("--checkpoint-every", default=None, type=int, metavar="STEPS",
                       help="checkpoint inside epochs too (always: after each epoch, and on Ctrl-C / SIGTERM)")
    train.add_argument("--on-nonfinite", default="raise", choices=["raise", "skip"])
    train.add_argument("--bf16", action="store_true",
                       help="matrix products in bfloat16, everything else in float32 (mixed precision)")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this run folder")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train, parser=train)
    common = _common_options()
    _add_eval(sub, common)
    _add_sample(sub, common)
    _add_sweep(sub, common, model)
    return parser


def _model_options() -> argparse.ArgumentParser:
    """The options train and sweep share: data set, architecture, optimiser, compiling, output folder."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(funcvae.data.DATASETS))
    p.add_argument("--arch", default="mlp", choices=ARCHS)
    p.add_argument("--hidden", default=[400], type=int, nargs="*", help="hidden sizes (default: 400)")
    p.add_argument("--latent", default=20, type=int)
    p.add_argument("--activation", default="relu", choices=sorted(funcvae.nn.ACTIVATIONS))
    p.add_argument("--likelihood", default="bernoulli", choices=LIKELIHOODS)
    p.add_argument("--obs-std", default=None, type=float, help="gaussian: fixed std (default: learned)")
    p.add_argument("--batch-size", default=128, type=int)
    p.add_argument("--lr", default=1e-3, type=float)
    p.add_argument("--no-compile", action="store_true", help="run the eager step (no torch.compile)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    return p


def _train(args) -> int:
    run_dir, config = _resumed(args) if args.resume else _new_run(args)
    settings = config["fit"]
    static = "static" if config["binarize"] == "static" else None
    x_train = funcvae.data.load(config["dataset"], "train", root=args.data_root, binarize=static, seed=settings["seed"])
    x_test = funcvae.data.load(config["dataset"], "test", root=args.data_root, binarize=static, seed=settings["seed"])
    if settings["batch_size"] > x_train.shape[0]:
        args.parser.error(f"--batch-size {settings['batch_size']} is larger than the data ({x_train.shape[0]} examples)")
    params = funcvae.init(seed=settings["seed"], **config["model"])
    if run_dir is None:
        run_dir = _new_run_dir(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-{config['dataset']}-"
                                               f"{params.spec.arch}-seed{settings['seed']}")
        config.update(n_train=int(x_train.shape[0]), n_test=int(x_test.shape[0]))
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"run folder: {run_dir}")
    print(f"{params}; {x_train.shape[0]} train / {x_test.shape[0]} held-out examples; nats per example")
    print(format_header())
    done = _history_so_far(run_dir)
    for record in done:
        print(format_row(record))
    with open(run_dir / "history.jsonl", "w") as log:
        log.writelines(json.dumps(r) + "\n" for r in done)

        def on_epoch(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(format_row(record), flush=True)

        try:
            params, _ = funcvae.fit(params, x_train, val_data=x_test, progress=False if args.quiet else None,
                                    callback=on_epoch, checkpoint_dir=run_dir, resume=True, **settings)
        except Interrupted as e:
            print(f"{e}\ncontinue with: python -m funcvae train --resume {run_dir}", file=sys.stderr)
            return 128 + e.signum
        except NonFiniteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    funcvae.save_params(run_dir / "params.safetensors", params)
    print(f"saved {run_dir / 'params.safetensors'}, {CHECKPOINT_FILE}, config.json, history.jsonl")
    return 0


def _new_run(args) -> tuple[None, dict]:
    """The config of a new run from the arguments, checked before any work (the folder comes later)."""
    model = dict(arch=args.arch, hidden=tuple(args.hidden), latent=args.latent, activation=args.activation,
                 likelihood=args.likelihood, obs_std=args.obs_std)
    settings = dict(epochs=10 if args.epochs is None else args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, beta=args.beta,
                    kl_warmup=args.kl_warmup, binarize="dynamic" if args.binarize == "dynamic" else None,
                    compile=False if args.no_compile else None, checkpoint_every=args.checkpoint_every,
                    on_nonfinite=args.on_nonfinite, matmul_dtype="bfloat16" if args.bf16 else None)
    try:
        check_settings(**{k: v for k, v in settings.items() if k not in ("seed", "compile", "matmul_dtype")},
                       seeds=[args.seed])
        spec = funcvae.ModelSpec(**model)
    except ValueError as e:
        args.parser.error(str(e))
    return None, {"dataset": args.dataset, "binarize": args.binarize, "model": spec.to_dict(), "fit": settings}


def _resumed(args) -> tuple[Path, dict]:
    """The run folder and config of ``--resume RUN``; ``--epochs`` may extend it."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.json").is_file():
        args.parser.error(f"--resume {run_dir}: no config.json there (not a run folder)")
    config = json.loads((run_dir / "config.json").read_text())
    if args.epochs is not None:
        config["fit"]["epochs"] = args.epochs
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir, config


def _history_so_far(run_dir: Path) -> list[dict]:
    """The epochs the run folder's checkpoint holds (history.jsonl is rewritten from them: a line written
    after the last checkpoint belongs to an epoch that will be trained again)."""
    path = run_dir / CHECKPOINT_FILE
    return funcvae.load(path).history[0] if path.is_file() else []


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

# eval, sample, sweep: each reads or makes a run folder and writes its numbers as JSON beside its pictures.

PICTURES = ("reconstructions", "samples", "interpolations", "traversal", "loss_curves")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", default=0, type=int, help="names every random draw (default: 0)")
    common.add_argument("--data-root", default=None, help="folder to look in first for the data (eval, sweep)")
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    return common


def _add_eval(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval", parents=[common], help="score a trained run on its held-out data, draw its pictures")
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by train")
    p.add_argument("--k", default=5000, type=_at_least(1), help="importance samples of IWAE_k (default: 5000)")
    p.add_argument("--n", default=None, type=_at_least(2), help="use the first N held-out examples (default: all)")
    p.set_defaults(run=_eval, parser=p)


def _add_sample(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sample", parents=[common], help="decode draws from the prior of a trained run")
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by train")
    p.add_argument("--n", default=64, type=_at_least(1), help="samples, 8 per row (default: 64)")
    p.set_defaults(run=_sample, parser=p)


def _add_sweep(sub, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sweep", parents=[common, model], help="rate-distortion: one model per KL weight, one stacked fit")
    p.add_argument("--betas", default=[0.1, 0.5, 1.0, 2.0, 4.0, 8.0], type=float, nargs="+", help="KL weights")
    p.add_argument("--epochs", default=10, type=int)
    p.set_defaults(run=_sweep, parser=p)


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


def _eval(args) -> int:
    run_dir, config, params, history = _open_run(args)
    if not history:
        args.parser.error(f"{run_dir}: history.jsonl holds no epoch; nothing to diagnose")
    x = _held_out(args, config)
    print(f"run folder: {run_dir}")
    print(f"{params}; the first {x.shape[0]} held-out {config['dataset']} examples"
          f"{'' if config['binarize'] is None else ', binarised (' + config['binarize'] + ')'}; nats per example")
    print(f"IWAE_{args.k} on {x.shape[0]} examples ({args.k * x.shape[0]:,} decoder passes) ...", flush=True)
    result = {"run": str(run_dir), "dataset": config["dataset"], "split": "test", "binarize": config["binarize"],
              "n": int(x.shape[0]), "seed": args.seed, **_scores(params, x, history, k=args.k, seed=args.seed)}
    print(f"IWAE_{args.k} took {result['iwae_seconds']:.1f} s")
    print(format_eval_table(result))
    print(diagnostics.format_report(result["findings"], history))
    result["files"] = {name: str(path) for name, path in zip(PICTURES, _eval_pictures(params, x, history, run_dir,
                                                                                       seed=args.seed))}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {run_dir / 'eval.json'}, " + ", ".join(result["files"].values()))
    return 0


def _open_run(args) -> tuple[Path, dict, funcvae.Params, list[dict]]:
    """The run folder of ``RUN``: its config, params and history (empty without history.jsonl)."""
    run_dir = Path(args.run_dir)
    for name in ("config.json", "params.safetensors"):
        if not (run_dir / name).is_file():
            args.parser.error(f"{run_dir}: no {name} there (not a finished run folder written by train)")
    config = json.loads((run_dir / "config.json").read_text())
    params = funcvae.load_params(run_dir / "params.safetensors")
    log = run_dir / "history.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return run_dir, config, params, history


def _held_out(args, config: dict):
    """The first ``--n`` held-out examples, binarised as the run's training saw them."""
    seed = config["fit"]["seed"]
    static = "static" if config["binarize"] == "static" else None
    x = funcvae.data.load(config["dataset"], "test", root=args.data_root, binarize=static, seed=seed)
    x = x.reshape(x.shape[0], -1)
    if config["binarize"] == "dynamic":  # the one fixed draw fit scored its held-out data on
        x = held_out_sets(x, [seed], "dynamic")[0]
    if args.n is not None and args.n > x.shape[0]:
        args.parser.error(f"--n {args.n} is more than the {x.shape[0]} held-out examples")
    return x[:args.n]


def _scores(params: funcvae.Params, x, history: list[dict], *, k: int, seed: int) -> dict:
    """eval's numbers, nats per example: ELBO terms and IWAE_k (means, standard errors), diagnostics, verdicts."""
    terms = funcvae.elbo(params, x, seed=seed)
    began = time.perf_counter()
    bound = iwae.iwae(params, x, k=k, seed=seed)
    seconds = time.perf_counter() - began
    kl_dims, active = diagnostics.kl_per_dim(params, x), diagnostics.active_units(params, x)
    out = {}
    for name, values in (("recon", terms["recon"]), ("kl", terms["kl"]), ("loss", terms["loss"]), ("iwae", bound),
                         ("gap", bound + terms["loss"])):  # gap: IWAE_k - ELBO, paired over the examples
        out[name], out[f"{name}_se"] = funcvae.sweep.mean_se(values)
    out.update(elbo=-out["loss"], iwae_k=k, nll=-out["iwae"], iwae_seconds=seconds, kl_per_dim=kl_dims.tolist(),
               active_units=active.count, latent=params.spec.latent, active_variance=active.variance.tolist(),
               mutual_information=float(diagnostics.mutual_information(params, x, seed=seed)),
               findings=diagnostics.diagnose(history, kl_per_dim=kl_dims, active=active))
    return out


def _eval_pictures(params: funcvae.Params, x, history: list[dict], run_dir: Path, *, seed: int) -> list[Path]:
    """The pictures of ``PICTURES``, in that order, written into the run folder."""
    pairs = min(x.shape[0] // 2, 5)
    return [pictures.reconstructions(params, x[:10], run_dir / "reconstructions.png"),
            pictures.prior_samples(params, run_dir / "samples.png", n=64, seed=seed),
            pictures.interpolations(params, x[:pairs], x[pairs:2 * pairs], run_dir / "interpolations.png"),
            pictures.traversal(params, x, run_dir / "traversal.png"),
            pictures.loss_curves(history, run_dir / "loss_curves.png")]


def format_eval_table(result: dict) -> str:
    """eval's table: ``label | value | std err`` lines, then the KL of each latent dim."""
    k = result["iwae_k"]
    rows = [("reconstruction (distortion)", result["recon"], result["recon_se"]),
            ("KL (rate)", result["kl"], result["kl_se"]), ("-ELBO", result["loss"], result["loss_se"]),
            (f"-IWAE_{k} (NLL estimate)", result["nll"], result["iwae_se"]),
            (f"IWAE_{k} - ELBO", result["gap"], result["gap_se"]),
            ("mutual information I(x;z)", result["mutual_information"], None)]
    width = max(len(label) for label, _, _ in rows)
    lines = [f"{'nats per example'.ljust(width)} | {'value':>9} | std err"]
    lines += [f"{label.ljust(width)} | {value:9.2f} | {'-' if se is None else f'{se:.2f}':>7}"
              for label, value, se in rows]
    lines.append(f"{'active units'.ljust(width)} | {str(result['active_units']) + '/' + str(result['latent']):>9} | "
                 f"{'-':>7}")
    lines.append("KL per latent dim: " + " ".join(f"{v:.2f}" for v in result["kl_per_dim"]))
    return "\n".join(lines)


def _sample(args) -> int:
    run_dir, _, params, _ = _open_run(args)
    path = pictures.prior_samples(params, run_dir / f"samples-seed{args.seed}.png", n=args.n, seed=args.seed)
    (run_dir / "samples.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "path": str(path)}, indent=2)
                                          + "\n")
    print(f"{args.n} prior samples of {params}, seed {args.seed}")
    print(f"wrote {path}, {run_dir / 'samples.json'}")
    return 0


def _sweep(args) -> int:
    model, settings = _sweep_config(args)
    x_train = funcvae.data.load(args.dataset, "train", root=args.data_root)
    x_test = funcvae.data.load(args.dataset, "test", root=args.data_root)
    if args.batch_size > x_train.shape[0]:
        args.parser.error(f"--batch-size {args.batch_size} is larger than the data ({x_train.shape[0]} examples)")
    params = funcvae.init(seed=args.seed, **model)
    run_dir = _new_run_dir(Path(args.out), f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{args.dataset}")
    config = {"dataset": args.dataset, "model": params.spec.to_dict(), "fit": settings,
              "n_train": int(x_train.shape[0]), "n_test": int(x_test.shape[0])}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"run folder: {run_dir}")
    print(f"{params}, {len(settings['betas'])} KL weights in one stacked fit; {x_train.shape[0]} train / "
          f"{x_test.shape[0]} held-out examples; nats per example, held-out")
    began = time.perf_counter()
    rows = funcvae.sweep.rate_distortion(params, x_train, val_data=x_test, progress=False if args.quiet else None,
                                         **settings)
    print(funcvae.sweep.format_table(rows))
    print(f"trained {len(rows)} models in {time.perf_counter() - began:.1f} s")
    (run_dir / "sweep.json").write_text(json.dumps({**config, "rows": rows}, indent=2) + "\n")
    plot = funcvae.sweep.rate_distortion_plot(rows, run_dir / "rate_distortion.png")
    print(f"wrote {run_dir / 'sweep.json'}, {plot}")
    return 0


def _sweep_config(args) -> tuple[dict, dict]:
    """The model and the sweep's settings from the arguments, checked before any work."""
    model = dict(arch=args.arch, hidden=tuple(args.hidden), latent=args.latent, activation=args.activation,
                 likelihood=args.likelihood, obs_std=args.obs_std)
    try:
        betas = funcvae.sweep.check_betas(args.betas)
        check_settings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=betas, kl_warmup=0,
                       binarize=None, seeds=[args.seed], stacked=True)
        funcvae.ModelSpec(**model)
    except ValueError as e:
        args.parser.error(str(e))
    return model, dict(betas=betas, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                       compile=False if args.no_compile else None)


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
