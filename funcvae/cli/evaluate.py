"""``eval`` and ``sample``: a finished run's held-out scores, diagnostics and pictures, or draws from its prior;
each writes its numbers as JSON beside its pictures in the run folder."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import funcvae
import funcvae.sweep
from funcvae import diagnostics, pictures, records
from funcvae.cli.folder import RunError
from funcvae.cli.options import at_least
from funcvae.cli.runs import open_run

PICTURES = ("reconstructions", "samples", "interpolations", "traversal", "loss_curves")


def add_eval(sub, common: argparse.ArgumentParser) -> None:
    """``eval RUN``: the ``common`` options, ``--k`` and ``--n``."""
    p = sub.add_parser("eval", parents=[common], help="score a trained run on its held-out data, draw its pictures")
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by train (its files are checked to be one "
                                                  "finished run's)")
    p.add_argument("--k", default=5000, type=at_least(1), help="importance samples of IWAE_k (default: 5000)")
    p.add_argument("--n", default=None, type=at_least(2), help="use the first N held-out examples (default: all)")
    p.set_defaults(run=run_eval, parser=p)


def add_sample(sub, common: argparse.ArgumentParser) -> None:
    """``sample RUN``: the ``common`` options and ``--n``."""
    p = sub.add_parser("sample", parents=[common], help="decode draws from the prior of a trained run")
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by train")
    p.add_argument("--n", default=64, type=at_least(1), help="samples, 8 per row (default: 64)")
    p.set_defaults(run=run_sample, parser=p)


def run_eval(args) -> int:
    """``eval``: print the run's scores and findings, write eval.json and the pictures; the exit code."""
    run_dir, config, params, history = open_run(args)
    if not history:
        raise RunError(f"{run_dir}: history.jsonl holds no epoch; nothing to diagnose")
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
    diverged = not all(math.isfinite(result[k]) for k in ("recon", "kl", "loss", "iwae"))
    result["files"] = _eval_pictures(params, x, history, run_dir, seed=args.seed, diverged=diverged)
    (run_dir / "eval.json").write_text(records.dumps(result, indent=2) + "\n")
    print(f"wrote {run_dir / 'eval.json'}, " + ", ".join(filter(None, result["files"].values())))
    return 0


def _held_out(args, config: dict):
    """The first ``--n`` held-out examples, binarised as the run's training saw them."""
    seed = config["fit"]["seed"]
    static = "static" if config["binarize"] == "static" else None
    x = funcvae.data.load(config["dataset"], "test", root=args.data_root, binarize=static, seed=seed)
    x = x.reshape(x.shape[0], -1)
    if config["binarize"] == "dynamic":  # the one fixed draw fit scored its held-out data on
        x = funcvae.data.held_out(x, seed, "dynamic")
    if args.n is not None and args.n > x.shape[0]:
        args.parser.error(f"--n {args.n} is more than the {x.shape[0]} held-out examples")
    return x[:args.n]


def _scores(params: funcvae.Params, x, history: list[dict], *, k: int, seed: int) -> dict:
    """eval's numbers, nats per example: ELBO terms and IWAE_k (means, standard errors), diagnostics, verdicts.
    The KL of each latent dim is None for a prior that does not factorise over them (the VampPrior)."""
    terms = funcvae.elbo(params, x, seed=seed)
    began = time.perf_counter()
    bound = funcvae.iwae(params, x, k=k, seed=seed)
    seconds = time.perf_counter() - began
    prior = params.model.prior
    kl_dims = diagnostics.kl_per_dim(params, x) if prior.factorised else None
    active = diagnostics.active_units(params, x)
    out = {}
    for name, values in (("recon", terms["recon"]), ("kl", terms["kl"]), ("loss", terms["loss"]), ("iwae", bound),
                         ("gap", bound + terms["loss"])):  # gap: IWAE_k - ELBO, paired over the examples
        out[name], out[f"{name}_se"] = funcvae.sweep.mean_se(values)
    out.update(elbo=-out["loss"], iwae_k=k, nll=-out["iwae"], iwae_seconds=seconds, prior=type(prior).__name__,
               kl_per_dim=None if kl_dims is None else kl_dims.tolist(), active_units=active.count,
               latent=params.model.latent, active_variance=active.variance.tolist(),
               mutual_information=float(diagnostics.mutual_information(params, x, seed=seed)),
               findings=diagnostics.diagnose(history, kl_per_dim=kl_dims, active=active,
                                               factorised_prior=params.model.prior.factorised))
    return out


def _eval_pictures(params: funcvae.Params, x, history: list[dict], run_dir: Path, *, seed: int,
                   diverged: bool) -> dict[str, str | None]:
    """The pictures of ``PICTURES`` written into the run folder, by name. A ``diverged`` run's model (scores not
    finite) may map data to non-finite latents, which the pictures refuse (ValueError): such a picture is None,
    and why is printed, so that eval.json still records the run."""
    pairs = min(x.shape[0] // 2, 5)
    draws = {"reconstructions": lambda: pictures.reconstructions(params, x[:10], run_dir / "reconstructions.png"),
             "samples": lambda: pictures.prior_samples(params, run_dir / "samples.png", n=64, seed=seed),
             "interpolations": lambda: pictures.interpolations(params, x[:pairs], x[pairs:2 * pairs],
                                                               run_dir / "interpolations.png"),
             "traversal": lambda: pictures.traversal(params, x, run_dir / "traversal.png"),
             "loss_curves": lambda: pictures.loss_curves(history, run_dir / "loss_curves.png")}
    files = {}
    for name in PICTURES:
        try:
            files[name] = str(draws[name]())
        except ValueError as e:
            if not diverged:
                raise
            print(f"{name}: not drawn, the run diverged ({e})")
            files[name] = None
    return files


def format_eval_table(result: dict) -> str:
    """eval's table: ``label | value | std err`` lines, then the KL of each latent dim (or why there is none)."""
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
    per_dim = result["kl_per_dim"]
    lines.append("KL per latent dim: " + (f"n/a (the {result['prior']} does not factorise)" if per_dim is None
                                          else " ".join(f"{v:.2f}" for v in per_dim)))
    return "\n".join(lines)


def run_sample(args) -> int:
    """``sample``: draw ``--n`` decoded samples from the run's prior into a picture, and samples.json."""
    run_dir, _, params, _ = open_run(args)
    path = pictures.prior_samples(params, run_dir / f"samples-seed{args.seed}.png", n=args.n, seed=args.seed)
    (run_dir / "samples.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "path": str(path)}, indent=2)
                                          + "\n")
    print(f"{args.n} prior samples of {params}, seed {args.seed}")
    print(f"wrote {path}, {run_dir / 'samples.json'}")
    return 0
