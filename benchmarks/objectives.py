"""Objectives: IWAE-k against the k-sample ELBO (Burda et al. 2016, Table 1), and the VampPrior against N(0, I)
(Tomczak & Welling 2018), on one model of the user's own and one training budget.

What it measures: the IWAE paper's MLP (``examples/custom_model.py``: 784-200-200-50 encoder with tanh units,
a mirrored decoder, Bernoulli likelihood), trained on the full Fashion-MNIST training set (60k, dynamic
binarisation) with Adam (lr 1e-3), batch 100, seed 0 and the same number of epochs in every run:

- A. for k = 1, 5, 50: the VAE trained on the k-sample ELBO (``objectives.elbo(samples=k)``) and the IWAE
  trained on its k-sample bound (``objectives.iwae(k)``);
- B. the same model with a VampPrior of 500 pseudo-inputs (``model.replace(prior=priors.vamp(500))``)
  trained on the ELBO (k = 1, Monte Carlo KL), against the N(0, I) row of A with k = 1.

Each trained model is scored on the held-out set, the 10k test images binarised by one fixed draw (as
``fit`` draws its validation set): the NLL estimate -IWAE_5000 on the first ``--iwae-n`` of them, -ELBO
(one sample per example) on all of them, and the active units out of 50 (Var_x E_q[z_i | x] > 0.01, all of
them). Nats per example; the ``±`` is the standard error of the mean over the examples. The examples are
the same for every model, and the IWAE noise of example i is the same for every model, so differences
between two models are also reported paired, example by example, with the standard error of the mean
difference, much smaller than either row's.

Run (about 35 minutes on an otherwise idle 2-core CPU, most of it the two k = 50 trainings (30 s an epoch
each) and the VampPrior's IWAE_5000 (1 s an example); several times longer on a busy one; the results in
benchmarks/results/objectives/ say what was run and on which machine):

    python benchmarks/objectives.py --epochs 20 --iwae-n 300

Options: ``--epochs``, ``--iwae-n`` (held-out examples scored by IWAE_5000), ``--out DIR`` (default
benchmarks/results/objectives; ``results.json`` and ``results.txt`` are written there after every run),
``--json PATH`` (the JSON elsewhere), ``--model PATH`` (a file with a module-level ``model``), ``--quick``
(tiny sizes, eager steps, a few seconds: a smoke test that writes only where ``--out``/``--json`` say).
Train seconds are the wall time of ``fit``, including the step's compilation (about half a minute per model).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout's funcvae
import funcvae  # noqa: E402
import funcvae.diagnostics  # noqa: E402
from funcvae.data import held_out  # noqa: E402

DEFAULT_MODEL = REPO / "examples" / "custom_model.py"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "objectives"


class Run(NamedTuple):
    """One row: the training objective ("elbo" or "iwae"), its samples k, and the prior."""

    objective: str
    k: int
    prior: str

    @property
    def name(self) -> str:
        return f"{self.objective}-k{self.k}-{self.prior}"


RUNS = (Run("elbo", 1, "normal"), Run("iwae", 1, "normal"), Run("elbo", 5, "normal"), Run("iwae", 5, "normal"),
        Run("elbo", 50, "normal"), Run("iwae", 50, "normal"), Run("elbo", 1, "vamp"))
#: Paired comparisons: (what, against what), each a difference of the first row's numbers minus the second's.
PAIRS = tuple((Run("iwae", k, "normal"), Run("elbo", k, "normal")) for k in (1, 5, 50)) + (
    (Run("elbo", 1, "vamp"), Run("elbo", 1, "normal")),)


@dataclass(frozen=True)
class Settings:
    """The budget and the evaluation; ``None`` sizes mean the whole split."""

    epochs: int = 20
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    pseudo_inputs: int = 500
    iwae_k: int = 5000
    iwae_n: int = 300
    eval_seed: int = 1
    n_train: int | None = None
    n_test: int | None = None
    compile: bool | None = None  # None: torch.compile where a C++ compiler exists; False: eager


QUICK = dict(epochs=1, n_train=200, n_test=100, iwae_n=8, iwae_k=64, compile=False)


def load_model(path: Path) -> funcvae.Model:
    """The module-level ``model`` of the Python file at ``path`` (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or not Path(path).is_file():
        raise FileNotFoundError(f"no model file at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(getattr(module, "model", None), funcvae.Model):
        raise ValueError(f"{path} must define a module-level funcvae.Model named `model`")
    return module.model


def objective_of(run: Run):
    """The training objective of ``run``: the k-sample ELBO (kl="auto") or the IWAE bound."""
    return funcvae.objectives.iwae(run.k) if run.objective == "iwae" else funcvae.objectives.elbo(samples=run.k)


def model_of(base: funcvae.Model, run: Run, settings: Settings) -> funcvae.Model:
    """``base`` with the prior of ``run``."""
    return base.replace(prior=funcvae.priors.vamp(settings.pseudo_inputs)) if run.prior == "vamp" else base


def train(model: funcvae.Model, run: Run, x_train: Tensor, settings: Settings):
    """``fit`` of fresh params under the shared budget: (params, history, wall seconds)."""
    params = model.init(settings.seed)
    start = time.perf_counter()
    params, history = funcvae.fit(
        params, x_train, epochs=settings.epochs, objective=objective_of(run), lr=settings.lr,
        batch_size=settings.batch_size, seed=settings.seed, binarize="dynamic", compile=settings.compile,
        progress=False, callbacks=[lambda r: _log(f"  {run.name} epoch {r['epoch']}: train loss {r['loss']:.2f} "
                                                 f"({r['seconds']:.0f} s)")])
    return params, history, time.perf_counter() - start


def evaluate(params, x_held: Tensor, settings: Settings) -> dict:
    """Per-example held-out numbers (nats): ``nll`` = -IWAE_k on the first ``iwae_n`` examples, ``neg_elbo``
    on all of them; the active units and the seconds taken."""
    start = time.perf_counter()
    nll = -funcvae.iwae(params, x_held[:settings.iwae_n], k=settings.iwae_k, seed=settings.eval_seed)
    neg_elbo = funcvae.elbo(params, x_held, seed=settings.eval_seed)["loss"]
    units = funcvae.diagnostics.active_units(params, x_held)
    return {"nll": nll, "neg_elbo": neg_elbo, "active_units": units.count, "au_variance": units.variance,
            "seconds": time.perf_counter() - start}


def mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)) of (n,) values, as float64."""
    v = values.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else math.nan


def row_of(run: Run, settings: Settings, history: list, train_s: float, ev: dict) -> dict:
    """One row of the report (JSON values): the summaries of ``ev``, the budget and the training history."""
    nll, nll_se = mean_se(ev["nll"])
    neg_elbo, neg_elbo_se = mean_se(ev["neg_elbo"])
    return {"name": run.name, "objective": run.objective, "k": run.k, "prior": run.prior, "epochs": settings.epochs,
            "nll": nll, "nll_se": nll_se, "nll_n": ev["nll"].numel(), "neg_elbo": neg_elbo,
            "neg_elbo_se": neg_elbo_se, "neg_elbo_n": ev["neg_elbo"].numel(), "active_units": ev["active_units"],
            "latent": ev["au_variance"].numel(), "au_variance": ev["au_variance"].tolist(),
            "train_seconds": train_s, "eval_seconds": ev["seconds"],
            "history": [{k: r[k] for k in ("epoch", "recon", "kl", "loss", "seconds")} for r in history]}


def differences(evals: dict) -> list[dict]:
    """Each pair's paired difference (first minus second) of -IWAE and -ELBO, mean and standard error."""
    out = []
    for a, b in PAIRS:
        if a.name in evals and b.name in evals:
            d_nll, d_nll_se = mean_se(evals[a.name]["nll"] - evals[b.name]["nll"])
            d_elbo, d_elbo_se = mean_se(evals[a.name]["neg_elbo"] - evals[b.name]["neg_elbo"])
            out.append({"run": a.name, "against": b.name, "nll": d_nll, "nll_se": d_nll_se,
                        "neg_elbo": d_elbo, "neg_elbo_se": d_elbo_se})
    return out


def table(report: dict) -> str:
    """The report as text: context, one row per run, then the paired differences."""
    s, m = report["settings"], report["machine"]
    lines = [f"{m['processor']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads), torch {m['torch']}, "
             f"{m['date']}",
             f"command: {report['command']}",
             f"model: {report['model']}",
             f"data: Fashion-MNIST, {report['n_train']} train (dynamic binarisation), held-out {report['n_test']} "
             f"test (one fixed binarisation); Adam lr {s['lr']}, batch {s['batch_size']}, seed {s['seed']}",
             f"nats per example, mean ± standard error over examples; -IWAE_{s['iwae_k']} on the first "
             f"{s['iwae_n']} held-out examples, -ELBO (1 sample) and active units on all {report['n_test']}", ""]
    head = (f"{'objective':9s} {'k':>3s} {'prior':6s} {'epochs':>6s}  {'-IWAE_' + str(s['iwae_k']):>16s}  "
            f"{'-ELBO':>16s}  {'AU':>5s}  {'train s':>8s}")
    lines += [head, "-" * len(head)]
    for r in report["rows"]:
        lines.append(f"{r['objective']:9s} {r['k']:3d} {r['prior']:6s} {r['epochs']:6d}  "
                     f"{_pm(r['nll'], r['nll_se']):>16s}  {_pm(r['neg_elbo'], r['neg_elbo_se']):>16s}  "
                     f"{r['active_units']:2d}/{r['latent']:<2d}  {r['train_seconds']:8.0f}")
    if report["differences"]:
        lines += ["", "paired differences, first minus second (negative: the first is better), same examples:"]
        for d in report["differences"]:
            lines.append(f"  {d['run']:18s} - {d['against']:18s}  -IWAE {_pm(d['nll'], d['nll_se'], '+.2f'):>16s}"
                         f"   -ELBO {_pm(d['neg_elbo'], d['neg_elbo_se'], '+.2f'):>16s}")
    return "\n".join(lines) + "\n"


def _pm(mean: float, se: float, fmt: str = ".2f") -> str:
    """``mean ± se`` as text."""
    return f"{mean:{fmt}} ± {se:.2f}"


def machine() -> dict:
    """The CPU model (from /proc/cpuinfo), cores, torch threads and version, and the date (UTC)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 platform.processor())
    return {"processor": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write(report: dict, out: Path | None, json_path: Path | None) -> None:
    """The report as JSON at ``json_path`` and as text in ``out``/results.txt (where given)."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1) + "\n")
    if out is not None:
        (out / "results.txt").write_text(table(report))


def _shown(path: Path) -> str:
    """``path`` as recorded in the results: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_all(settings: Settings, model_path: Path, command: str, out: Path | None, json_path: Path | None) -> dict:
    """Every run in turn, training then scoring; the report is rewritten after each run."""
    base = load_model(model_path)
    x_train = funcvae.data.load("fashion-mnist", "train")[:settings.n_train]
    x_test = funcvae.data.load("fashion-mnist", "test")[:settings.n_test]
    x_held = held_out(x_test, settings.seed, "dynamic")
    report = {"machine": machine(), "command": command, "settings": asdict(settings), "model": repr(base),
              "model_file": _shown(model_path), "n_train": x_train.shape[0], "n_test": x_test.shape[0],
              "rows": [], "differences": []}
    evals = {}
    for run in RUNS:
        _log(f"{run.name}: training {settings.epochs} epoch(s)")
        params, history, seconds = train(model_of(base, run, settings), run, x_train, settings)
        evals[run.name] = ev = evaluate(params, x_held, settings)
        report["rows"].append(row_of(run, settings, history, seconds, ev))
        report["differences"] = differences(evals)
        r = report["rows"][-1]
        _log(f"{run.name}: -IWAE {_pm(r['nll'], r['nll_se'])}, -ELBO {_pm(r['neg_elbo'], r['neg_elbo_se'])}, "
             f"AU {r['active_units']}, train {seconds:.0f} s, eval {ev['seconds']:.0f} s")
        _write(report, out, json_path)
    return report


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, help=f"epochs of every run (default {Settings.epochs})")
    parser.add_argument("--iwae-n", type=int, help=f"held-out examples scored by IWAE_k (default {Settings.iwae_n})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and eager steps: a smoke test")
    parser.add_argument("--out", type=Path, help=f"folder for results.json and results.txt (default {DEFAULT_OUT}; "
                                                 "none with --quick)")
    parser.add_argument("--json", type=Path, help="write the JSON report here instead")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a file defining `model`")
    args = parser.parse_args(argv)
    settings = Settings(**QUICK) if args.quick else Settings()
    settings = replace(settings, **{k: v for k, v in (("epochs", args.epochs), ("iwae_n", args.iwae_n))
                                    if v is not None})
    out = args.out if args.out is not None or args.quick else DEFAULT_OUT
    json_path = args.json if args.json is not None else None if out is None else out / "results.json"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/objectives.py", *argv])
    report = run_all(settings, args.model, command, out, json_path)
    print(table(report), end="")
    return report


if __name__ == "__main__":
    main()
