"""The disentanglement table of docs/evaluation.md: β-VAE (β = 1, 4, 16) and β-TCVAE (β = 6) trained on the
shapes set (``funcvae.data.shapes``: 32 x 32, the small factor grid), several seeds each, scored by MIG, DCI
disentanglement and the FactorVAE score on the whole grid, with the held-out -ELBO.

    python benchmarks/disentanglement.py --out benchmarks/results/disentanglement_cpu_amd_epyc.json

Each objective's seeds train together as one stack (``funcvae.stack``): one compiled step, the models apart in
their seeds alone. Disentanglement depends heavily on the seed (Locatello et al. 2019), so the
table gives each setting's mean and its spread (min to max) over the seeds, never one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import funcvae
from funcvae import disentanglement, objectives

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objectives import machine  # noqa: E402  (the benchmarks' record of the machine)

#: The MLP of the table: 1024-256-10 with a Bernoulli decoder (the images are binary).
MODEL = dict(arch="mlp", input_shape=(1, 32, 32), hidden=(256,), latent=10)
FIT = dict(batch_size=128, lr=1e-3)
#: The settings of the table: (name, objective for a training set of n images).
SETTINGS = (("beta-VAE, beta=1", lambda n: objectives.elbo(1.0)),
            ("beta-VAE, beta=4", lambda n: objectives.elbo(4.0)),
            ("beta-VAE, beta=16", lambda n: objectives.elbo(16.0)),
            ("beta-TCVAE, beta=6", lambda n: objectives.beta_tcvae(beta=6.0, dataset_size=n)))
SCORES = ("mig", "dci_disentanglement", "factor_vae", "loss")


def run(seeds: list[int], epochs: int, n_scored: int) -> list[dict]:
    """Every setting trained with every seed and scored; one row per model."""
    x_train, _ = funcvae.data.shapes("train", size=32, grid="small")
    x_test, _ = funcvae.data.shapes("test", size=32, grid="small")
    grid, factors = funcvae.data.shapes("all", size=32, grid="small")
    rows = []
    for name, make in SETTINGS:
        _log(f"{name}: {len(seeds)} seeds, {epochs} epochs of {x_train.shape[0]} images")
        models = funcvae.stack([funcvae.init(seed=s, **MODEL) for s in seeds])
        trained, histories = funcvae.fit(models, x_train, objective=make(x_train.shape[0]), scale=255, epochs=epochs,
                                         seed=list(seeds), progress=False, **FIT)
        for seed, params, history in zip(seeds, funcvae.unstack(trained), histories):
            loss = float(funcvae.elbo(params, x_test, seed=1, scale=255)["loss"].mean())
            scored = disentanglement.scores(params, grid, factors, seed=seed, n=n_scored, scale=255)
            row = {"setting": name, "seed": seed, "loss": loss, "mig": scored["mig"]["mig"],
                   "dci_disentanglement": scored["dci"]["disentanglement"],
                   "dci_completeness": scored["dci"]["completeness"],
                   "dci_informativeness": scored["dci"]["informativeness_test"],
                   "sap": scored["sap"]["sap"], "factor_vae": scored["factor_vae"]["score"],
                   "beta_vae": scored["beta_vae"]["score"],
                   "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history]}
            _log(f"  seed {seed}: -ELBO {loss:.2f}, MIG {row['mig']:.3f}, DCI-D {row['dci_disentanglement']:.3f}, "
                 f"FactorVAE {row['factor_vae']:.3f}")
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table: each setting's mean of each score, and its min to max over the seeds."""
    head = "| setting | seeds | MIG | DCI disentanglement | FactorVAE score | -ELBO (nats) |"
    lines = [head, "|" + " --- |" * 6]
    for name, _ in SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        cells = []
        for key in SCORES:
            values = [r[key] for r in mine]
            digits = 1 if key == "loss" else 3
            cells.append(f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f} to "
                         f"{max(values):.{digits}f})")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON file of results")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n", type=int, default=10000, help="grid images whose codes MIG, SAP and DCI score")
    args = p.parse_args(argv)
    torch.manual_seed(0)  # nothing here draws from the global generator; pinned all the same
    began = time.perf_counter()
    rows = run(list(range(args.seeds)), args.epochs, args.n)
    result = {"machine": machine(), "seconds": time.perf_counter() - began, "model": MODEL,
              "fit": {**FIT, "epochs": args.epochs}, "n_scored": args.n,
              "codes": "posterior means", "rows": rows, "table": table(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table"])
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
