"""The colour run of docs/models.md: the built-in conv VAE with the discretised logistic likelihood, trained on a
folder of colour PNG files as a user's own would be, and scored in bits per dimension on held-out images.

    python benchmarks/colour.py --out benchmarks/results/colour

The folder holds coloured shapes (``funcvae.data.coloured_shapes``, 32 x 32 RGB) written as PNG files, train/
and test/ of a temporary folder (``--images`` keeps them), and read back with ``funcvae.data.folder``. Writes
DIR/results.json (settings, history, held-out ELBO terms and -IWAE_k in nats per example and bits per dimension),
DIR/reconstructions.png (held-out images above their reconstructions) and DIR/samples.png (prior samples): the
likelihood's mean images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

import funcvae
from funcvae import likelihoods, pictures

MODEL = dict(arch="conv", input_shape=(3, 32, 32), channels=(32, 64), hidden=(256,), latent=32,
             likelihood="discretized_logistic")
FIT = dict(batch_size=64, lr=1e-3, seed=0)


def write_folder(root: Path, n: int, seed: int) -> None:
    """``n`` coloured shapes as PNG files ``root/00000.png`` ... (a fresh folder)."""
    root.mkdir(parents=True)
    images, _ = funcvae.data.coloured_shapes(n, size=32, seed=seed)
    for i, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image, mode="RGB").save(root / f"{i:05d}.png")


def run(out: Path, images: Path, n_train: int, n_test: int, epochs: int, k: int) -> dict:
    """Write the image folder, train on it, score the held-out images; the results, also written as JSON."""
    write_folder(images / "train", n_train, seed=0)
    write_folder(images / "test", n_test, seed=1)  # another seed: other images
    x_train = funcvae.data.folder(images / "train", mode="RGB")
    x_test = funcvae.data.folder(images / "test", mode="RGB")
    params = funcvae.init(seed=FIT["seed"], **MODEL)
    params, history = funcvae.fit(params, x_train, scale=255, val_data=x_test, epochs=epochs, progress=False, **FIT)
    held_out = x_test.float() / 255
    terms = funcvae.elbo(params, held_out, seed=1)
    nll = -funcvae.iwae(params, held_out, k=k, seed=2)
    dims = params.model.features
    scores = {name: float(v.mean()) for name, v in (("recon", terms["recon"]), ("kl", terms["kl"]),
                                                      ("loss", terms["loss"]), ("nll", nll))}
    result = {"model": MODEL, "fit": {**FIT, "epochs": epochs}, "n_train": n_train, "n_test": n_test, "iwae_k": k,
              "nats_per_example": scores,
              "bits_per_dim": {name: likelihoods.bits_per_dim(v, dims) for name, v in scores.items()},
              "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history]}  # no timings: a shared CPU
    out.mkdir(parents=True)
    pictures.reconstructions(params, held_out[:10], out / "reconstructions.png")
    pictures.prior_samples(params, out / "samples.png", n=64, seed=0)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="a folder that does not exist yet")
    p.add_argument("--images", type=Path, default=None,
                   help="write the PNG files here (a folder that does not exist yet) and keep them")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--k", type=int, default=20, help="importance samples of the held-out -IWAE_k")
    args = p.parse_args(argv)
    for given in (args.out, args.images):
        if given is not None and given.exists():
            p.error(f"{given} exists; the run writes a fresh folder")
    with tempfile.TemporaryDirectory() as scratch:
        result = run(args.out, args.images or Path(scratch), args.n_train, args.n_test, args.epochs, args.k)
    bits, nats = result["bits_per_dim"], result["nats_per_example"]
    print(f"held-out {args.n_test} images, {3 * 32 * 32} dims: -ELBO {nats['loss']:.1f} nats ({bits['loss']:.4f} "
          f"bits/dim), -IWAE_{args.k} {nats['nll']:.1f} nats ({bits['nll']:.4f} bits/dim); KL {nats['kl']:.1f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
