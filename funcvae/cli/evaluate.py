"""``eval`` and ``sample``: a finished run's held-out scores, diagnostics and pictures, or draws from its prior;
each writes its numbers as JSON beside its pictures in the run folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

import funcvae
import funcvae.sweep
from funcvae import diagnostics, pictures, quality
from funcvae._runtime import records
from funcvae.cli import factors, own_data
from funcvae.cli.folder import ACCEPT_HELP, RunError
from funcvae.cli.options import add_common_options, at_least, command
from funcvae.cli.runs import open_run, open_scored

PICTURES = ("reconstructions", "samples", "nearest_training_images", "interpolations", "traversal", "loss_curves")
#: eval's default (k, examples): seconds on two cores; ``--full`` takes IWAE_FULL_K on every held-out example.
QUICK = (1000, 1000)
FULL_K = 5000
#: Samples shown beside their nearest training images.
NEIGHBOURS_SHOWN = 12


def add_eval(sub) -> None:
    """``eval RUN`` or ``eval --pretrained NAME [--out DIR]``: the common options, ``--k`` and ``--n``."""
    p, g = command(sub, "eval", "score a trained run on its held-out data, draw its pictures",
                   ("evaluation", "data", "run"))
    p.add_argument("run_dir", metavar="RUN", nargs="?", help="a run folder written by train (its files are checked to "
                                                               "be one finished run's)")
    g["run"].add_argument("--pretrained", default=None, choices=sorted(funcvae.models.PRETRAINED), metavar="NAME",
                          help="instead of RUN, the model shipped with the package that was trained on data set NAME: "
                               + ", ".join(sorted(funcvae.models.PRETRAINED)) + " (default: none, RUN is scored)")
    g["run"].add_argument("--out", default=None, metavar="DIR",
                          help="with --pretrained: the folder for eval.json and the pictures (default: "
                               "runs/pretrained-NAME)")
    add_common_options(g)
    g["evaluation"].add_argument("--k", default=None, type=at_least(1),
                                 help=f"importance samples of IWAE_k (default: {QUICK[0]})")
    g["evaluation"].add_argument("--n", default=None, type=at_least(2),
                                 help=f"use the first N held-out examples (default: {QUICK[1]})")
    g["evaluation"].add_argument("--full", action="store_true",
                                 help=f"IWAE_{FULL_K} on every held-out example, the figure papers report (minutes "
                                      "where the default takes seconds; the disentanglement scores take "
                                      "disentanglement_lib's sizes)")
    g["data"].add_argument("--factors", default=None, metavar="FILE", help=factors.help_text())
    g["run"].add_argument("--accept-changed-code", action="store_true", help=ACCEPT_HELP)
    p.set_defaults(run=run_eval, parser=p)


def add_sample(sub) -> None:
    """``sample RUN``: the common options, ``--n`` and ``--context``."""
    p, g = command(sub, "sample", "decode draws from the prior of a trained run", ("sampling", "data", "run"))
    p.add_argument("run_dir", metavar="RUN", help="a run folder written by train")
    add_common_options(g)
    g["sampling"].add_argument("--n", default=64, type=at_least(1), help="samples, 8 per row")
    g["sampling"].add_argument("--context", default=None, type=at_least(0), metavar="LABEL",
                               help="a conditional run: samples of this label (default: every label in turn)")
    g["run"].add_argument("--accept-changed-code", action="store_true", help=ACCEPT_HELP)
    p.set_defaults(run=run_sample, parser=p)


def run_eval(args) -> int:
    """``eval``: print the run's scores and findings, write eval.json and the pictures; the exit code."""
    if args.full and (args.k is not None or args.n is not None):
        args.parser.error("--full is IWAE_5000 on every held-out example; it takes no --k or --n")
    args.k = FULL_K if args.full else QUICK[0] if args.k is None else args.k
    run_dir, config, params, history = open_scored(args)
    if not history:
        raise RunError(f"{run_dir}: history.jsonl holds no epoch; nothing to diagnose")
    x, c, split = _held_out(args, config, params.model.context is not None)
    factor_data = _factor_data(args, config, params)
    print(f"run folder: {run_dir}")
    what = f"held-out {config['dataset']}" if split == "test" else f"{split} ({config['data'][split]['path']})"
    print(f"{params}; the first {x.shape[0]} {what} examples"
          f"{'' if config['binarize'] is None else ', binarised (' + config['binarize'] + ')'}; nats per example")
    if split == "train":
        print("the run has no held-out data (train --val-data): these scores are on images it trained on, and "
              "flatter it")
    print(f"IWAE_{args.k} on {x.shape[0]} examples ({args.k * x.shape[0]:,} decoder passes) ...", flush=True)
    result = {"run": str(run_dir), "dataset": config["dataset"], "split": split, "binarize": config["binarize"],
              "data": None if split == "test" else config["data"][split]["path"],
              "n": int(x.shape[0]), "seed": args.seed,
              **_scores(params, x, history, k=args.k, seed=args.seed, context=c, progress=not args.quiet and None)}
    print(f"IWAE_{args.k} took {result['iwae_seconds']:.1f} s")
    print(format_eval_table(result))
    diverged = not all(math.isfinite(result[k]) for k in ("recon", "kl", "loss", "iwae"))
    x_train = None if diverged or _network(config) is None else _training_images(args, config)
    result["samples"] = None if diverged else _samples(params, x, x_train, config, seed=args.seed, context=c)
    if result["samples"] is not None:
        print(format_samples_table(result["samples"]))
        result["findings"] += result["samples"]["findings"]
    result["conditional"] = None if diverged or c is None or _network(config) is None else \
        quality.samples.conditional_quality(
        params, x, c, seed=args.seed, network=config["dataset"])
    if result["conditional"] is not None:
        print(format_conditional(result["conditional"]))
    result["disentanglement"] = None
    if factor_data is not None and not diverged:
        print("disentanglement ...", flush=True)
        result["disentanglement"] = factors.score(params, factor_data, seed=args.seed, full=args.full)
        print(factors.format_table(result["disentanglement"]))
    print(diagnostics.format_report(result["findings"], history))
    result["files"] = _eval_pictures(params, x, history, run_dir, seed=args.seed, diverged=diverged,
                                     nearest=None if result["samples"] is None else (x_train, result["samples"]),
                                     context=c, names=None if result["disentanglement"] is None else
                                     result["disentanglement"]["dims"])
    (run_dir / "eval.json").write_text(records.dumps(result, indent=2) + "\n")
    print(f"wrote {run_dir / 'eval.json'}, " + ", ".join(filter(None, result["files"].values())))
    return 0


def _held_out(args, config: dict, labelled: bool) -> tuple:
    """The first ``--n`` examples eval scores, (N, F) binarised as the run's training saw them; their labels when
    ``labelled`` (else None); and their split: a data set's "test", or a ``--data`` run's "val" (its --val-data)
    or "train" (``own_data.held_out``: a run without held-out data is scored on its training images)."""
    seed = config["fit"]["seed"]
    if config.get("data") is not None:
        x, c, split = own_data.held_out(config, labelled)
    else:
        x = _dataset_images(args, config, "test")
        c = funcvae.data.labels(config["dataset"], "test", root=args.data_root) if labelled else None
        split = "test"
    if args.n is not None and args.n > x.shape[0]:
        args.parser.error(f"--n {args.n} is more than the {x.shape[0]} held-out examples")
    n = x.shape[0] if args.full else QUICK[1] if args.n is None else args.n
    if split != "test":  # a file's images, perhaps memory-mapped: only the first n are read
        x = own_data.values(x[:n])
    x = x.reshape(x.shape[0], -1)
    if config["binarize"] == "dynamic":  # the one fixed draw fit scored its held-out data on
        x = funcvae.data.held_out(x, seed, "dynamic")
    return x[:n], None if c is None else c[:n], split


def _factor_data(args, config: dict, params: funcvae.Params) -> tuple | None:
    """``factors.of_run``'s data for the run (None: no factors, or a conditional model, said why), read and
    checked before any scoring. ``--factors`` goes with the held-out images eval reads, all of them: the run's
    --val-data (else its --data) file as it is, or the data set's test split as the run saw it."""
    def held_out():
        if config.get("data") is not None:
            x, _, split = own_data.held_out(config, False)
            return x, split
        return _dataset_images(args, config, "test"), "test"

    data = factors.of_run(config, held_out, args.factors)
    if data is not None and params.model.context is not None:
        print("disentanglement: not scored; a conditional model's code is read with its context, which the scores "
              "do not vary")
        return None
    return data


def _training_images(args, config: dict):
    """The run's training images as its model sees them (flattened; binarised as for training when static)."""
    x = _dataset_images(args, config, "train")
    return x.reshape(x.shape[0], -1)


def _dataset_images(args, config: dict, split: str):
    """A data set run's images of ``split`` as its training saw them: binarised by the run's seed when static."""
    static = "static" if config["binarize"] == "static" else None
    return funcvae.data.load(config["dataset"], split, root=args.data_root, binarize=static, seed=config["fit"]["seed"])


def _network(config: dict) -> str | None:
    """The feature network of the run's data set (``quality.network.NETWORKS``), or None: --data, shapes."""
    return config["dataset"] if config["dataset"] in quality.network.NETWORKS else None


def _samples(params: funcvae.Params, x, x_train, config: dict, *, seed: int, context=None) -> dict | None:
    """``quality.sample_quality`` on the held-out examples with the dataset's own feature network (None, said
    why, for held-out sets too small to split)."""
    if x.shape[0] < 12:
        print(f"samples: not scored, {x.shape[0]} held-out examples are too few to split into two sets of 6")
        return None
    if _network(config) is None:
        print("samples: not scored, their features need a classifier of the data (one for mnist and fashion-mnist; "
              "none for shapes or --data)")
        return None
    began = time.perf_counter()
    out = quality.sample_quality(params, x, seed=seed, x_train=x_train, network=config["dataset"], context=context)
    out["seconds"] = time.perf_counter() - began
    return out


def _scores(params: funcvae.Params, x, history: list[dict], *, k: int, seed: int, context=None,
            progress: bool | None = False) -> dict:
    """eval's numbers, nats per example: ELBO terms and IWAE_k (means, standard errors), diagnostics, verdicts.
    The KL of each latent dim is None where it has no closed form (a prior that does not factorise, a posterior
    given as a draw); the KL of each latent group is None for a model without groups; the mutual information
    is None for a posterior given as a draw (its density at another example's z is not known)."""
    model = params.model
    terms = funcvae.elbo(params, x, seed=seed, context=context)
    began = time.perf_counter()
    bound = funcvae.iwae(params, x, k=k, seed=seed, context=context, progress=progress)
    seconds = time.perf_counter() - began
    kl_dims = diagnostics.kl_per_dim(params, x, context=context) if model.gaussian and model.prior.factorised else None
    active = diagnostics.active_units(params, x, context=context, seed=seed)
    out = {}
    for name, values in (("recon", terms["recon"]), ("kl", terms["kl"]), ("loss", terms["loss"]), ("iwae", bound),
                         ("gap", bound + terms["loss"])):  # gap: IWAE_k - ELBO, paired over the examples
        out[name], out[f"{name}_se"] = funcvae.sweep.mean_se(values)
    groups = None if "kl_groups" not in terms else dict(zip(model.groups, terms["kl_groups"].mean(0).tolist()))
    information = (diagnostics.latent_information(params, x, seed=seed, kl=out["kl"], context=context) if model.gaussian
                   else {"mutual_information": None, "mi_ceiling": math.log(x.shape[0]), "mi_saturated": False,
                         "aggregate_kl": None})
    out.update(elbo=-out["loss"], iwae_k=k, nll=-out["iwae"], iwae_seconds=seconds, prior=type(model.prior).__name__,
               kl_per_dim=None if kl_dims is None else kl_dims.tolist(), kl_groups=groups, active_units=active.count,
               active_by_group=diagnostics.active_by_group(params, active), latent=model.noise_size,
               active_variance=active.variance.tolist(), **information,
               findings=diagnostics.diagnose(_with_groups(history, groups), kl_per_dim=kl_dims, active=active,
                                             factorised_prior=model.prior.factorised or groups is not None))
    # A density's nats are no code lengths: bits/dim of its likelihood terms would need log 256 nats a dimension
    # more and dequantised training (docs/models.md, "Bits per dimension"), so they are left out; the KL's stand.
    discrete = model.likelihood.discrete
    out["bits_per_dim"] = {k: funcvae.likelihoods.bits_per_dim(out[k], model.features) if discrete or k == "kl"
                           else None for k in ("recon", "kl", "loss", "nll")}
    return out


def _with_groups(history: list[dict], groups: dict | None) -> list[dict]:
    """The history with its last record's held-out KL per group replaced by eval's (on eval's examples)."""
    if groups is None:
        return history
    return [*history[:-1], {**history[-1], "val_kl_groups": groups}]


def _eval_pictures(params: funcvae.Params, x, history: list[dict], run_dir: Path, *, seed: int,
                   diverged: bool, nearest: tuple | None, context=None,
                   names: list[str] | None = None) -> dict[str, str | None]:
    """The pictures of ``PICTURES`` written into the run folder, by name; the nearest training images need
    ``nearest`` (the training images and the ``samples`` result), else are None. A ``diverged`` run's model
    (scores not finite) may map data to non-finite latents, which the pictures refuse (ValueError): such a
    picture is None, and why is printed, so that eval.json still records the run. A conditional model has no
    interpolations and a model with latent groups no traversal (None, said why). ``names`` labels the
    traversal's latent dims (each one's most informative factor)."""
    pairs = min(x.shape[0] // 2, 5)
    model = params.model
    c10 = None if context is None else context[:10]
    draws = {"reconstructions": lambda: pictures.reconstructions(params, x[:10], run_dir / "reconstructions.png",
                                                                 context=c10, seed=seed),
             "samples": lambda: pictures.prior_samples(params, run_dir / "samples.png", n=64, seed=seed),
             "nearest_training_images": lambda: None if nearest is None else _nearest_picture(
                 params, *nearest, run_dir / "nearest_training_images.png", seed=seed),
             "interpolations": lambda: None if model.context is not None else pictures.interpolations(
                 params, x[:pairs], x[pairs:2 * pairs], run_dir / "interpolations.png", seed=seed),
             "traversal": lambda: None if model.groups is not None else pictures.traversal(
                 params, x[:1000], run_dir / "traversal.png", context=None if context is None else context[:1000],
                 seed=seed, names=names),
             "loss_curves": lambda: pictures.loss_curves(history, run_dir / "loss_curves.png")}
    files = {}
    for name in PICTURES:
        try:
            path = draws[name]()
            files[name] = None if path is None else str(path)
        except ValueError as e:
            if not diverged:
                raise
            print(f"{name}: not drawn, the run diverged ({e})")
            files[name] = None
    return files


def _nearest_picture(params: funcvae.Params, x_train, samples: dict, path: Path, *, seed: int) -> Path:
    """The first ``NEIGHBOURS_SHOWN`` prior samples that ``sample_quality`` scored, above their nearest
    training images (its memorisation check found them)."""
    shown = quality.samples.prior_images(params, samples["n"], seed=seed)[:NEIGHBOURS_SHOWN]
    nearest = samples["memorisation"]["nearest"][:NEIGHBOURS_SHOWN]
    return pictures.nearest_training_images(params, shown, x_train[nearest], path)


def format_samples_table(samples: dict) -> str:
    """eval's "samples" section: each set's metrics against the held-out reference half, the real floor last."""
    head = ("FID", "KID", "precision", "recall", "density", "coverage", "classes")
    rows = [[name + (" (floor)" if name == "real" else ""), *_sample_cells(samples["sets"][name])]
            for name in quality.SETS]
    widths = [max(len(cell) for cell in column) for column in zip(("set", *head), *rows)]
    lines = [f"samples: {samples['n']} of each against {samples['n']} held-out images, on the {samples['network']} "
             f"classifier's features ({samples['seconds']:.1f} s)"]
    for row in [("set", *head), *rows]:
        lines.append(" | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
    memo = samples["memorisation"]
    if memo is not None:
        lines.append(f"nearest training image (on thumbnails): median distance {memo['median_samples']:.2f} for "
                     f"samples, {memo['median_held_out']:.2f} for held-out images; distance to it over distance to "
                     f"the nearest held-out image: median {memo['median_ratio_samples']:.2f} for samples, "
                     f"{memo['median_ratio_held_out']:.2f} for held-out images; {memo['share']:.1%} of samples are "
                     f"relatively nearer a training image than {1 - memo['expected']:.0%} of held-out images are "
                     f"(chance: {memo['expected']:.1%}, memorisation flagged above "
                     f"{memo['expected'] + quality.rules.SIGNIFICANT * memo['share_se']:.1%})")
    return "\n".join(lines)


def _sample_cells(r: dict) -> list[str]:
    """One set's row of the samples section: FID, KID ± std (significant digits: KID is often under 0.01),
    precision, recall, density, coverage, classes."""
    classes = r["classes"]
    return [f"{r['fid']:.2f}", f"{_significant(r['kid'], 3)}±{_significant(r['kid_std'], 2)}",
            f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['density']:.3f}", f"{r['coverage']:.3f}",
            "-" if classes is None else f"{classes['classes_covered']}/{classes['classes_real']}"]


def _significant(x: float, digits: int) -> str:
    """``x`` in fixed point to ``digits`` significant digits (114.35 -> "114", 2.0 -> "2.0", 0.00123 -> "0.00123")."""
    if not math.isfinite(x) or x == 0:
        return f"{x:.{digits - 1}f}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def format_eval_table(result: dict) -> str:
    """eval's table: ``label | value | std err`` lines, then the KL of each latent dim (or why there is none)."""
    k, bits = result["iwae_k"], result["bits_per_dim"]
    saturated = result["mi_saturated"]
    rows = [("reconstruction (distortion)", f"{result['recon']:.2f}", result["recon_se"], bits["recon"], ""),
            ("KL (rate)", f"{result['kl']:.2f}", result["kl_se"], bits["kl"], ""),
            ("-ELBO", f"{result['loss']:.2f}", result["loss_se"], bits["loss"], "an upper bound on -log p(x)"),
            (f"-IWAE_{k} (NLL estimate)", f"{result['nll']:.2f}", result["iwae_se"], bits["nll"],
             "an upper bound on -log p(x), tighter"),
            (f"IWAE_{k} - ELBO", f"{result['gap']:.2f}", result["gap_se"], None, ""),
            *_information_rows(result, saturated)]
    width = max(len(label) for label, *_ in rows)
    lines = [f"{'nats per example'.ljust(width)} | {'value':>9} | std err | bits/dim"]
    lines += [f"{label.ljust(width)} | {value:>9} | {'-' if se is None else f'{se:.2f}':>7} | "
              f"{'-' if b is None else f'{b:.4f}':>8}" + (f"  ({note})" if note else "")
              for label, value, se, b, note in rows]
    lines.append(f"{'active units'.ljust(width)} | {str(result['active_units']) + '/' + str(result['latent']):>9} | "
                 f"{'-':>7} | {'-':>8}")
    groups, active = result.get("kl_groups"), result.get("active_by_group")
    if groups is not None:
        lines.append("KL per latent group: " + ", ".join(
            f"{g} {v:.2f} ({active[g]} active)" + (" collapsed" if v < diagnostics.COLLAPSE_KL else "")
            for g, v in groups.items()))
    per_dim = result["kl_per_dim"]
    why = (f"the {result['prior']} does not factorise" if result.get("kl_groups") is None and result["prior"] !=
           "StandardNormal" else "the posterior has no closed-form KL")
    lines.append("KL per latent dim: " + (f"n/a ({why})" if per_dim is None else " ".join(f"{v:.2f}" for v in per_dim)))
    return "\n".join(lines)


def format_conditional(result: dict) -> str:
    """eval's conditional section: how often the domain classifier labels a sample as its condition, and each
    class's FID."""
    fids = ", ".join(f"{c}: {v:.1f}" for c, v in enumerate(result["fid_per_class"]))
    return (f"conditional samples: {result['n_per_class']} per class; the classifier labels "
            f"{result['accuracy']:.1%} ± {result['accuracy_se']:.1%} as their condition (real held-out images: "
            f"{result['real_accuracy']:.1%}); FID per class {fids}")


def _information_rows(result: dict, saturated: bool) -> list[tuple]:
    """The table's rows on I(x; z): a lower bound and the prior gap it implies, or for a posterior given as a
    draw (no density at another example's z) only the KL's upper bound."""
    if result["mutual_information"] is None:
        return [("mutual information I(x;z)", f"<= {result['kl']:.2f}", None, None,
                 "at most the KL; the posterior, given as a draw, has no density at another example's z")]
    return [("mutual information I(x;z)", f">= {result['mutual_information']:.2f}", None, None,
             f"a lower bound; at most log N = {result['mi_ceiling']:.2f}" + (
                 ", which it has reached: the true I(x;z) may be far larger" if saturated else "")),
            ("KL(q(z) || p(z)), prior gap", f"<= {result['aggregate_kl']:.2f}", None, None,
             "E KL(q(z|x) || p(z)) - I(x;z): an upper bound" + (", loose while I(x;z) is saturated" if saturated
                                                              else ""))]


def run_sample(args) -> int:
    """``sample``: draw ``--n`` decoded samples from the run's prior into a picture, and samples.json; for a
    conditional run, of the label ``--context`` (without it, every label in turn)."""
    run_dir, _, params, _ = open_run(args)
    k = params.model.context
    if args.context is not None and k is None:
        args.parser.error(f"--context {args.context}: {run_dir} is an unconditional model")
    if args.context is not None and args.context >= k:
        args.parser.error(f"--context {args.context}: the model's labels are 0 to {k - 1}")
    name = f"samples-seed{args.seed}" + ("" if args.context is None else f"-context{args.context}")
    if args.context is None:
        path = pictures.prior_samples(params, run_dir / f"{name}.png", n=args.n, seed=args.seed)
    else:
        images = funcvae.sample(params, args.n, seed=args.seed, context=torch.full((args.n,), args.context))
        path = pictures.save_grid(images, run_dir / f"{name}.png", nrow=8, title=f"{args.n} prior samples of label "
                                  f"{args.context} (seed {args.seed})")
    (run_dir / "samples.json").write_text(json.dumps({"n": args.n, "seed": args.seed, "context": args.context,
                                                      "path": str(path)}, indent=2) + "\n")
    label = "" if args.context is None else f" of label {args.context}"
    print(f"{args.n} prior samples{label} of {params}, seed {args.seed}")
    print(f"wrote {path}, {run_dir / 'samples.json'}")
    return 0
