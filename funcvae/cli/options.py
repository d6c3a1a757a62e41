"""The options train and sweep share, and what they become: config.json's settings (checked as usage errors
before any work), and the objective, optimiser and ``funcvae.FitConfig`` fields those settings describe.

Every int option is checked as it is parsed (``at_least``), by every command alike; the float options are
checked, before any work, by the library objects they build (``check_settings``), the one place that knows
their ranges."""

from __future__ import annotations

import argparse
import dataclasses
import math

import funcvae
from funcvae import objectives, shorthand
from funcvae.models import ARCHS, LIKELIHOODS, POSTERIORS, PRIORS
from funcvae.shorthand import DEFAULTS, OPTIMIZERS
#: What a run made before the objective and optimiser options existed has instead of those settings: the
#: beta-ELBO and Adam.
LEGACY_FIT = dict(objective="elbo", k=None, free_bits=None, optimizer="adam", momentum=None, weight_decay=None)
#: The settings of config.json's "fit" that are ``funcvae.FitConfig`` fields (the rest build the objective
#: and the optimiser).
FIT_FIELDS = frozenset(f.name for f in dataclasses.fields(funcvae.FitConfig))


#: The groups of ``--help``, in its order.
GROUPS = ("model", "objective", "optimiser", "data", "run")


class HelpFormatter(argparse.HelpFormatter):
    """Help whose every option shows its default: an option whose help does not state one already gets
    "(default: ...)" added (flags and options unset by default say what unset means in their own words)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or not action.option_strings or unset:
            return text
        return f"{text} (default: %(default)s)"


def command(sub, name: str, help: str, titles=GROUPS) -> tuple[argparse.ArgumentParser, dict]:
    """A sub-command's parser and its option groups by title (``--help`` lists them in ``titles``' order)."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    return p, {title: p.add_argument_group(title) for title in titles}


def add_model_options(groups: dict) -> None:
    """The options train and sweep share: the model, its data set, the optimiser, compiling, the output folder."""
    m, o, d, r = groups["model"], groups["optimiser"], groups["data"], groups["run"]
    m.add_argument("--model", default=None, metavar="FILE.py:NAME",
                   help="a funcvae.Model of your own: the attribute NAME of the Python file FILE.py (default: the "
                        "built-in model that --arch ... --pseudo-inputs describe)")
    m.add_argument("--arch", default=None, choices=ARCHS, help="default: mlp")
    m.add_argument("--hidden", default=None, type=at_least(1), nargs="*", help="hidden sizes (default: 400)")
    m.add_argument("--latent", default=None, type=at_least(1), help="default: 20")
    m.add_argument("--activation", default=None, choices=sorted(funcvae.nn.ACTIVATIONS), help="default: relu")
    m.add_argument("--likelihood", default=None, choices=LIKELIHOODS, help="default: bernoulli")
    m.add_argument("--obs-std", default=None, type=float, help="gaussian: fixed std (default: learned)")
    m.add_argument("--prior", default=None, choices=PRIORS, help="normal (default): N(0, I); vamp: the VampPrior")
    m.add_argument("--latents", default=None, type=at_least(1), nargs="+",
                   help="--arch ladder: each latent group's size, bottom to top, one per --hidden size (default: 64 32 "
                        "with --hidden 512 256)")
    m.add_argument("--posterior", default=None, choices=POSTERIORS,
                   help="mlp, conv: diagonal (default), full (full-covariance Gaussian) or iaf (flow steps)")
    m.add_argument("--flow-steps", default=None, type=at_least(1), help="--posterior iaf: MADE steps (default: 2)")
    m.add_argument("--context", default=None, type=at_least(1), metavar="K",
                   help="a conditional model on the dataset's labels: a context of K, 10 for its classes (default: "
                        "unconditional)")
    m.add_argument("--pseudo-inputs", default=None, type=at_least(1),
                   help="vamp only: its pseudo-inputs (default: 500)")
    groups["objective"].add_argument(
        "--free-bits", default=None, type=float, metavar="NATS",
        help="the ELBO with a factorised prior (not vamp) only: a floor on each latent dimension's KL (default: none)")
    o.add_argument("--batch-size", default=128, type=at_least(1), help="examples per step")
    o.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="default: adam")
    o.add_argument("--lr", default=None, type=float, help="learning rate (default: 1e-3)")
    o.add_argument("--momentum", default=None, type=float, help="sgd only (default: 0.9)")
    o.add_argument("--weight-decay", default=None, type=float, help="adamw only: decoupled (default: 0.01)")
    d.add_argument("--dataset", default="fashion-mnist", choices=sorted(funcvae.data.DATASETS), help="images to train on")
    r.add_argument("--no-compile", action="store_true", help="run the eager step (no torch.compile)")
    r.add_argument("--out", default="runs", help="parent folder of the run folder")


def add_common_options(groups: dict) -> None:
    """The options eval, sample and sweep share: seed, data folder, progress bar."""
    groups["run"].add_argument("--seed", default=0, type=at_least(0), help="names every random draw")
    groups["data"].add_argument("--data-root", default=None,
                                help="folder to look in first for the data (default: the system's, then a download)")
    groups["run"].add_argument("--quiet", action="store_true", help="no progress bar")


def at_least(minimum: int):
    """An argparse type: an int >= ``minimum``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


def objective_settings(args) -> dict:
    """config.json's record of the objective: ``objective``, ``k``, ``beta``, ``kl_warmup``, ``free_bits``
    (None where they do not apply), and for mmd only ``mmd_weight``; an option that does not apply to the
    objective is a usage error. beta-tcvae's training set size is the data's, known once they are loaded."""
    name = args.objective or DEFAULTS["objective"]
    if args.mmd_weight is not None and name != "mmd":
        args.parser.error("--mmd-weight applies to --objective mmd only")
    if name in ("iwae", "mmd"):
        wrong = [flag for flag, value in (("--beta", args.beta), ("--kl-warmup", args.kl_warmup)) if value is not None]
        if wrong:
            args.parser.error(f"--objective {name} has no KL weight to set ({' and '.join(wrong)} are options of "
                              "the ELBO)")
    if args.k is not None and name != "iwae":
        args.parser.error("--k (importance samples) applies to --objective iwae only")
    if name == "iwae":
        return dict(objective=name, k=DEFAULTS["k"] if args.k is None else args.k, beta=None, kl_warmup=None,
                    free_bits=args.free_bits)
    if name == "mmd":
        return dict(objective=name, k=None, beta=None, kl_warmup=None, free_bits=args.free_bits,
                    mmd_weight=DEFAULTS["mmd_weight"] if args.mmd_weight is None else args.mmd_weight)
    if name == "beta-tcvae":
        if args.kl_warmup is not None:
            args.parser.error("--kl-warmup: --objective beta-tcvae has no KL warm-up")
        return dict(objective=name, k=None, beta=DEFAULTS["beta"] if args.beta is None else args.beta,
                    kl_warmup=None, free_bits=args.free_bits)
    warmup = DEFAULTS["kl_warmup"] if args.kl_warmup is None else args.kl_warmup
    if not (math.isfinite(warmup) and warmup >= 0):
        args.parser.error(f"--kl-warmup must be a finite number of epochs >= 0, got {warmup}")
    return dict(objective=name, k=None, beta=DEFAULTS["beta"] if args.beta is None else args.beta, kl_warmup=warmup,
                free_bits=args.free_bits)


def optimizer_settings(args) -> dict:
    """config.json's record of the optimiser: ``optimizer``, ``lr``, ``momentum`` (sgd), ``weight_decay``
    (adamw); an option that does not apply to the optimiser is a usage error."""
    name = args.optimizer or DEFAULTS["optimizer"]
    for flag, value, owner in (("--momentum", args.momentum, "sgd"), ("--weight-decay", args.weight_decay, "adamw")):
        if value is not None and name != owner:
            args.parser.error(f"{flag} applies to --optimizer {owner} only")
    return dict(optimizer=name, lr=DEFAULTS["lr"] if args.lr is None else args.lr,
                momentum=(DEFAULTS["momentum"] if args.momentum is None else args.momentum) if name == "sgd" else None,
                weight_decay=(DEFAULTS["weight_decay"] if args.weight_decay is None else args.weight_decay)
                if name == "adamw" else None)


def check_settings(args, model: funcvae.Model | None, fit_settings: dict, each_objective: list[dict]) -> None:
    """Usage error unless the settings can train ``model`` (``settings_problem``; None: any model)."""
    problem = settings_problem(model, fit_settings, each_objective)
    if problem:
        args.parser.error(problem)


def settings_problem(model: funcvae.Model | None, fit_settings: dict, each_objective: list[dict]) -> str | None:
    """What is wrong with the settings, or None: ``funcvae.FitConfig`` must take them, each objective must be
    able to train ``model`` and the optimiser must be buildable (checked before any work: the warm-up's length
    in steps is not known yet, so it is checked at one step per epoch, and beta-tcvae's training set at one
    batch)."""
    examples = fit_settings.get("batch_size") or 1
    try:
        funcvae.FitConfig(**fit_fields(fit_settings))
        shorthand.build({**fit_settings, "free_bits": None}, examples=examples)
        for settings in each_objective:
            built = shorthand.build({**settings, "free_bits": None}, examples=examples).objectives[0]
            if model is not None:
                objectives.check(built, model)
    except ValueError as e:
        return str(e)
    if model is None:
        return None
    for settings in each_objective:
        try:
            objectives.check(shorthand.build(settings, examples=examples).objectives[0], model)
        except ValueError as e:  # only free bits are left to refuse
            return f"--free-bits {settings['free_bits']}: {e}"
    return None


def given(args, command: str) -> list[str]:
    """The options (their ``dest``) that ``command``'s own command line sets, whatever their values, in the
    parser's order: its arguments parsed again into a namespace whose every attribute is already set, to a
    marker, since argparse fills in a default only where the namespace has none. (Comparing each value with
    its default cannot tell ``--batch-size 128`` from no ``--batch-size`` at all.)"""
    unset = object()
    namespace = argparse.Namespace(**{dest: unset for dest in vars(args)})
    args.parser.parse_args(args.argv[args.argv.index(command) + 1:], namespace=namespace)
    return [dest for dest, value in vars(namespace).items() if value is not unset]


def check_data(args, model: funcvae.Model, x, batch_size: int) -> None:
    """Usage error unless ``model`` takes the examples of ``x`` and a batch of ``batch_size`` fits in it."""
    if tuple(x.shape[1:]) != model.input_shape:
        args.parser.error(f"the model takes {'x'.join(map(str, model.input_shape))} inputs, the data are "
                          f"{'x'.join(map(str, x.shape[1:]))}")
    if batch_size > x.shape[0]:
        args.parser.error(f"--batch-size {batch_size} is larger than the data ({x.shape[0]} examples)")


def fit_fields(settings: dict) -> dict:
    """The settings that are ``funcvae.FitConfig`` fields."""
    return {k: v for k, v in settings.items() if k in FIT_FIELDS}
