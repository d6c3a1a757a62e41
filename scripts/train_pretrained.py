"""Train the default model that ships as ``funcvae.models.pretrained("fashion-mnist")`` and write it where the
package reads it; then score the shipped params (stored in float16, read back as float32) beside the float32
params they were rounded from, on Fashion-MNIST's test images. Copy the SHA-256 it prints into
``funcvae.models.PRETRAINED`` and the scores into docs/evaluation.md.

    python3 scripts/train_pretrained.py    # 50 epochs of fit's defaults: minutes on 2 CPU cores, then the scores

The default model (``funcvae.init(seed=0)``) is trained by ``fit``'s defaults (the ELBO, Adam lr 1e-3, batch 128,
seed 0) on the 60k training images, the test images as its held-out data; run again on the same kind of CPU
with the same software, it writes the same bytes (docs/training.md, "Same seed, same bits").
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import funcvae
from funcvae.sweep import mean_se

EPOCHS = 50
#: The test images of the unit test's ELBO (tests/test_pretrained.py's figure): the first 500.
TEST_IMAGES = 500


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    x_train, x_test = (funcvae.data.load("fashion-mnist", split) for split in ("train", "test"))
    trained, history = funcvae.fit(funcvae.init(seed=args.seed), x_train, epochs=args.epochs, val_data=x_test,
                                   seed=args.seed)
    last = history[-1]
    print(f"epoch {last['epoch']}: -ELBO {last['loss']:.2f} on the training images, {last['val_loss']:.2f} "
          "held-out (nats per example)")
    sha = funcvae.models.save_pretrained(args.out, trained, history)
    shipped, _ = funcvae.models.load_pretrained(args.out, sha)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size} bytes ({size / 2**20:.2f} MiB), SHA-256 {sha}")
    rows = _scores({"float32": trained, "shipped": shipped}, x_test, k=args.k, n=args.n)
    print("Fashion-MNIST test images, nats per example, mean ± standard error over the images (seed 0); the "
          "difference is paired (the same images and noise)")
    print(f"{'':24} | {'float32':>18} | {'shipped (float16)':>18} | {'shipped - float32':>20}")
    for label, r in rows.items():
        cells = [f"{r[name][0]:.3f} ± {r[name][1]:.3f}".rjust(18) for name in ("float32", "shipped")]
        print(f"{label:24} | " + " | ".join(cells) + f" | {r['difference'][0]:+.5f} ± {r['difference'][1]:.5f}")
    return {"sha256": sha, "bytes": size, "scores": rows, "history": history}


def _scores(params: dict, x: torch.Tensor, *, k: int, n: int) -> dict:
    """Per model of ``params`` (by name) and for their difference, (mean, standard error) of: the ELBO on all
    of ``x``, the ELBO on its first ``TEST_IMAGES`` and IWAE_k on its first ``n``, all at seed 0 (eval's)."""
    bounds = {f"ELBO, {x.shape[0]} images": lambda p: -funcvae.elbo(p, x, seed=0)["loss"],
              f"ELBO, first {TEST_IMAGES}": lambda p: -funcvae.elbo(p, x[:TEST_IMAGES], seed=0)["loss"],
              f"IWAE_{k}, first {n}": lambda p: funcvae.iwae(p, x[:n], k=k, seed=0)}
    rows = {}
    for label, bound in bounds.items():
        values = {name: bound(p) for name, p in params.items()}
        rows[label] = {name: mean_se(v) for name, v in values.items()}
        rows[label]["difference"] = mean_se(values["shipped"] - values["float32"])
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default=EPOCHS, type=int, help=f"default: {EPOCHS}, as shipped")
    p.add_argument("--seed", default=0, type=int, help="the init's and the batch order's seed (default: 0)")
    p.add_argument("--k", default=1000, type=int, help="importance samples of IWAE_k (default: 1000)")
    p.add_argument("--n", default=1000, type=int, help="test images IWAE_k is scored on (default: 1000)")
    p.add_argument("--out", default=funcvae.models.PRETRAINED["fashion-mnist"][0], type=Path,
                   help="where to write the weights (default: the package's file)")
    return p


if __name__ == "__main__":
    main()
