"""The likelihood table of docs/models.md: every built-in family trained under ONE protocol on dynamically
binarised Fashion-MNIST, scored by -IWAE_k on the same held-out images with the same noise.

    python benchmarks/families.py run ROW --out DIR    # one row: train, score; DIR/ROW.json, DIR/ROW.pt
    python benchmarks/families.py table DIR            # the markdown table and the paired differences
    python benchmarks/families.py all --out DIR        # every row, one after another, then the table

Protocol (``PROTOCOL``): 50 epochs, batch 128, Adam 1e-3, KL warm-up over the first 10 epochs, seed 0, a fresh
binarisation of every batch. The ladder also takes free bits per group (its paper's training); every other
setting is the same for every row. The held-out set is the first ``HELD_OUT`` test images, binarised once
(``data.held_out``, seed 0): the same images for every row, and ``iwae``'s noise is a function of the seed and
the example's index, so every row sees the same noise (paired differences). A conditional row's bound is on
log p(x | y), y the image's label.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import funcvae
from funcvae import diagnostics, models, quality

PROTOCOL = {"epochs": 50, "batch_size": 128, "lr": 1e-3, "kl_warmup": 10, "seed": 0, "binarize": "dynamic"}
HELD_OUT = 1000
K = 5000
#: Each row: the model, the fit settings it adds to the protocol, and the row it is compared with.
ROWS = {
    "mlp": (lambda: models.mlp(), {}, None),
    "full": (lambda: models.mlp(posterior="full"), {}, "mlp"),
    "iaf": (lambda: models.mlp(posterior="iaf"), {}, "mlp"),
    "ladder": (lambda: models.ladder(), {"free_bits": 0.5}, "mlp"),
    "conditional": (lambda: models.mlp(context=10), {}, "mlp"),
}


def held_out() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scored images (binarised once, seed 0), the same images' grey levels, and their labels."""
    grey = funcvae.data.load("fashion-mnist", "test")[:HELD_OUT].reshape(HELD_OUT, -1)
    return funcvae.data.held_out(grey, 0, "dynamic"), grey, funcvae.data.labels("fashion-mnist", "test")[:HELD_OUT]


def run_row(name: str, out: Path, epochs: int, k: int) -> dict:
    """Train row ``name`` under the protocol and score it; its numbers as JSON, its per-example bounds saved."""
    make, extra, _ = ROWS[name]
    model = make()
    x_train = funcvae.data.load("fashion-mnist", "train", pixels="uint8")
    y_train = funcvae.data.labels("fashion-mnist", "train")
    x, grey, y = held_out()
    context = model.context is not None
    began = time.perf_counter()
    params, history = funcvae.fit(model.init(0), x_train, scale=255, progress=False,
                                  context=y_train if context else None, **{**PROTOCOL, "epochs": epochs, **extra})
    trained = time.perf_counter() - began
    c = y if context else None
    began = time.perf_counter()
    bound = funcvae.iwae(params, x, k=k, seed=0, context=c)
    scored = time.perf_counter() - began
    terms = funcvae.elbo(params, x, seed=0, context=c)
    active = diagnostics.active_units(params, x, context=c, seed=0)
    real = funcvae.data.load("fashion-mnist", "test")[HELD_OUT:HELD_OUT + 2000].reshape(2000, -1)
    samples = quality.samples.prior_images(params, 2000, seed=0)
    fid = quality.fid(real, samples, network="fashion-mnist")
    row = {"row": name, "model": repr(model), "settings": {**PROTOCOL, "epochs": epochs, **extra}, "k": k,
           "n": HELD_OUT, "nll": -float(bound.mean()), "nll_se": float(bound.std() / math.sqrt(HELD_OUT)),
           "elbo": float(-terms["loss"].mean()), "kl": float(terms["kl"].mean()),
           "kl_groups": None if "kl_groups" not in terms else dict(zip(model.groups,
                                                                      terms["kl_groups"].mean(0).tolist())),
           "active_units": active.count, "latent": model.noise_size,
           "active_by_group": diagnostics.active_by_group(params, active), "prior_fid": fid,
           "train_seconds": trained, "iwae_seconds": scored, "last_epoch": history[-1],
           "command": f"python benchmarks/families.py run {name} --out {out}" + (
               f" --epochs {epochs}" if epochs != PROTOCOL["epochs"] else "") + (f" --k {k}" if k != K else ""),
           "cpu": _cpu(), "torch": torch.__version__}
    if context:
        # Samples are mean images (grey levels): the classifier's ceiling and the per-class FIDs are taken on the
        # real images' grey levels, not on their binarisation.
        row["conditional"] = quality.samples.conditional_quality(params, grey, y, seed=0, network="fashion-mnist")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(bound, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def table(out: Path) -> str:
    """The markdown table of the rows found in ``out`` and each row's paired difference with its baseline."""
    rows = {n: json.loads((out / f"{n}.json").read_text()) for n in ROWS if (out / f"{n}.json").is_file()}
    lines = ["| row | -IWAE (nats) | ± SE | vs baseline (paired) | -ELBO | KL | active units | prior FID |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        base = ROWS[name][2]
        diff = "-"
        if base in rows:
            d = torch.load(out / f"{base}.pt") - torch.load(out / f"{name}.pt")  # NLL(row) - NLL(base), per image
            diff = f"{float(d.mean()):+.2f} ± {float(d.std() / math.sqrt(d.numel())):.2f} vs {base}"
        active = f"{r['active_units']}/{r['latent']}" + (
            "" if r["active_by_group"] is None else " (" + ", ".join(f"{g} {v}" for g, v in r["active_by_group"].items())
            + ")")
        kl = f"{r['kl']:.2f}" + ("" if r["kl_groups"] is None else " (" + ", ".join(
            f"{g} {v:.2f}" for g, v in r["kl_groups"].items()) + ")")
        lines.append(f"| {name} | {r['nll']:.2f} | {r['nll_se']:.2f} | {diff} | {-r['elbo']:.2f} | {kl} | {active} | "
                     f"{r['prior_fid']:.1f} |")
    lines.append("")
    lines += [f"- {name}: `{r['command']}` ({r['train_seconds'] / 60:.0f} min of training, IWAE_{r['k']} in "
              f"{r['iwae_seconds']:.0f} s; {r['cpu']}, torch {r['torch']})" for name, r in rows.items()]
    for name, r in rows.items():
        c = r.get("conditional")
        if c is not None:
            fids = ", ".join(f"{v:.0f}" for v in c["fid_per_class"])
            lines.append(f"- {name}, its samples: the classifier labels {c['accuracy']:.1%} ± {c['accuracy_se']:.1%} "
                         f"of them as their condition ({c['n_per_class']} per class; real images of the same labels: "
                         f"{c['real_accuracy']:.1%}); FID of each label's samples against its real images, labels "
                         f"0-9: {fids}")
    return "\n".join(lines)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("run", "all"):
        s = sub.add_parser(command)
        if command == "run":
            s.add_argument("row", choices=sorted(ROWS))
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--epochs", type=int, default=PROTOCOL["epochs"])
        s.add_argument("--k", type=int, default=K)
    t = sub.add_parser("table")
    t.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.command == "table":
        print(table(args.out))
        return 0
    for name in [args.row] if args.command == "run" else list(ROWS):
        row = run_row(name, args.out, args.epochs, args.k)
        print(json.dumps({k: row[k] for k in ("row", "nll", "nll_se", "kl", "active_units", "prior_fid",
                                              "train_seconds", "iwae_seconds")}), flush=True)
    if args.command == "all":
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
