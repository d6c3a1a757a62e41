"""Baseline: funcvae's training reaches the same held-out ELBO as the classic eager ``nn.Module`` VAE.

What it proves: the reference VAE of the PyTorch examples (MLP 784-400-20, ReLU, Bernoulli decoder,
Adam lr 1e-3, batch 128, summed BCE + analytic KL), written here as a plain ``nn.Module`` trained in an
ordinary eager loop, and ``funcvae.fit`` on ``funcvae.init`` params (the same architecture, objective and
optimiser) are trained on Fashion-MNIST for several seeds each, alternating the two sides seed by seed.
Both are scored on the full test set (10k examples, one latent sample per example) in nats per example:
recon = -log p(x | z), KL(q(z | x) || N(0, I)) and their sum (-ELBO). The verdict says whether the two
sides' mean totals over seeds differ by no more than twice the standard error of that difference.

The seeds of the two sides name different random streams (initial weights, batch order, noise), so the
runs are not paired: the comparison is between the two distributions of outcomes over seeds. funcvae
averages the loss over a batch where the classic loop sums it; Adam's update does not depend on that
scale (up to its eps), so both follow the same optimisation.

Run (several minutes on a small CPU):

    python benchmarks/baseline_vae.py --json benchmarks/results/baseline_fashion_mnist.json

Options: ``--seeds 0 1 2`` (default), ``--epochs 10`` (default), ``--json PATH`` to keep every figure and
a description of the machine. Timings are wall seconds of each side's training; funcvae's include its
held-out evaluation after every epoch, the classic side's do not (it is evaluated once, untimed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmark this checkout's funcvae
import funcvae  # noqa: E402

BATCH_SIZE = 128
LR = 1e-3
EVAL_SEED_OFFSET = 1_000_003  # the classic side's evaluation noise: a stream apart from training's


class ClassicVAE(nn.Module):
    """The VAE of the PyTorch examples: 784-400-20 encoder, 20-400-784 decoder giving Bernoulli logits."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(x))
        return self.fc21(h), self.fc22(h)

    def decode(self, z: Tensor) -> Tensor:
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x: Tensor, generator: torch.Generator | None = None):
        mu, logvar = self.encode(x.view(-1, 784))
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def classic_terms(model: ClassicVAE, x: Tensor, generator: torch.Generator | None = None):
    """Per-example (recon, kl) in nats, each (B,), from one reparameterised sample per example."""
    logits, mu, logvar = model(x, generator)
    recon = F.binary_cross_entropy_with_logits(logits, x.view(-1, 784), reduction="none").sum(1)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return recon, kl


def train_classic(x_train: Tensor, epochs: int, seed: int) -> tuple[ClassicVAE, list[dict], float]:
    """The classic eager loop; returns the model, per-epoch training averages and the wall seconds."""
    torch.manual_seed(seed)  # default nn.Linear init and the training noise come from the global stream
    model = ClassicVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    order_gen = torch.Generator().manual_seed(seed)
    n, history = x_train.shape[0], []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        sums = torch.zeros(2)
        for idx in torch.randperm(n, generator=order_gen).split(BATCH_SIZE):
            recon, kl = classic_terms(model, x_train[idx])
            loss = recon.sum() + kl.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sums += torch.stack([recon.sum(), kl.sum()]).detach()
        recon_avg, kl_avg = (sums / n).tolist()
        history.append({"epoch": epoch, "recon": recon_avg, "kl": kl_avg, "loss": recon_avg + kl_avg})
    return model, history, time.perf_counter() - start


def evaluate_classic(model: ClassicVAE, x_test: Tensor, seed: int) -> dict:
    """Held-out averages in nats per example, one seeded latent sample per example."""
    gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    with torch.no_grad():
        recon, kl = classic_terms(model, x_test, gen)
    return {"recon": recon.mean().item(), "kl": kl.mean().item(), "total": (recon + kl).mean().item()}


def run_classic(x_train: Tensor, x_test: Tensor, epochs: int, seed: int) -> dict:
    model, history, seconds = train_classic(x_train, epochs, seed)
    return {**evaluate_classic(model, x_test, seed), "seconds": seconds, "history": history}


def run_funcvae(x_train: Tensor, x_test: Tensor, epochs: int, seed: int) -> dict:
    params = funcvae.init(seed=seed)
    start = time.perf_counter()
    params, history = funcvae.fit(params, x_train, epochs=epochs, batch_size=BATCH_SIZE, lr=LR, seed=seed,
                                  val_data=x_test, progress=False)
    seconds = time.perf_counter() - start
    last = history[-1]
    return {"recon": last["val_recon"], "kl": last["val_kl"], "total": last["val_loss"],
            "seconds": seconds, "history": history}


RUNNERS = {"classic": run_classic, "funcvae": run_funcvae}


def run_all(x_train: Tensor, x_test: Tensor, epochs: int, seeds: list[int]) -> list[dict]:
    """Both sides for each seed in turn; which side goes first alternates, so drift hits both alike."""
    runs = []
    for i, seed in enumerate(seeds):
        sides = list(RUNNERS) if i % 2 == 0 else list(reversed(RUNNERS))
        row = {"seed": seed}
        for side in sides:
            row[side] = RUNNERS[side](x_train, x_test, epochs, seed)
            print(f"  seed {seed} {side:8s} total {row[side]['total']:.3f} nats "
                  f"({row[side]['seconds']:.1f} s)", file=sys.stderr, flush=True)
        runs.append(row)
    return runs


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n)); the error is NaN for a single value."""
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def summarise(runs: list[dict]) -> dict:
    """Each side's mean +- se of the held-out total, and the difference funcvae - classic."""
    out = {}
    for side in RUNNERS:
        mean, se = mean_se([r[side]["total"] for r in runs])
        out[side] = {"mean_total": mean, "se_total": se,
                     "mean_seconds": statistics.fmean(r[side]["seconds"] for r in runs)}
    diff = out["funcvae"]["mean_total"] - out["classic"]["mean_total"]
    se = math.hypot(out["funcvae"]["se_total"], out["classic"]["se_total"])
    within = None if math.isnan(se) else abs(diff) <= 2 * se
    out["difference"] = {"funcvae_minus_classic": diff, "se": se, "within_noise": within}
    return out


def print_table(runs: list[dict], summary: dict, epochs: int) -> None:
    print(f"Held-out Fashion-MNIST test set (10k), nats per example, after {epochs} epochs")
    print(f"{'seed':>4}  {'side':8s} {'recon':>9} {'KL':>8} {'total':>9} {'train s':>8}")
    for r in runs:
        for side in RUNNERS:
            s = r[side]
            print(f"{r['seed']:>4}  {side:8s} {s['recon']:9.3f} {s['kl']:8.3f} {s['total']:9.3f} "
                  f"{s['seconds']:8.1f}")
    print()
    for side in RUNNERS:
        s = summary[side]
        print(f"{side:8s} total: {s['mean_total']:.3f} +- {s['se_total']:.3f} (mean +- se over {len(runs)} seeds), "
              f"mean train {s['mean_seconds']:.1f} s")
    d = summary["difference"]
    print(f"difference funcvae - classic: {d['funcvae_minus_classic']:+.3f} +- {d['se']:.3f} nats")
    if d["within_noise"] is None:
        print("verdict: undetermined (a standard error needs at least two seeds)")
    elif d["within_noise"]:
        print(f"verdict: |difference| <= 2 se ({2 * d['se']:.3f}): within noise")
    else:
        print(f"verdict: |difference| > 2 se ({2 * d['se']:.3f}): NOT within noise")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    return {"platform": platform.platform(), "processor": model, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _finite(obj):
    """``obj`` with every NaN float replaced by None, so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="write every figure and the machine here")
    args = parser.parse_args(argv)
    x_train = funcvae.data.load("fashion-mnist", "train")
    x_test = funcvae.data.load("fashion-mnist", "test")
    runs = run_all(x_train, x_test, args.epochs, args.seeds)
    summary = summarise(runs)
    print_table(runs, summary, args.epochs)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"settings": {"epochs": args.epochs, "seeds": args.seeds, "batch_size": BATCH_SIZE, "lr": LR,
                               "dataset": "fashion-mnist"},
                  "machine": machine(), "runs": runs, "summary": summary}
        args.json.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
