"""A conditional VAE (Sohn et al. 2015) written by hand: ``Model(..., context=10)`` on Fashion-MNIST's labels.

Every function takes the context c (a one-hot label of 10, funcvae makes it from the integer labels) LAST:
the encoder reads (x, c), the decoder (z, c). ``fit`` takes the labels as ``context=``; ``funcvae.sample``
draws images of the labels it is given:

    python3 examples/conditional.py --epochs 3 --n-train 10000
"""

from __future__ import annotations

import argparse

import torch

import funcvae
from funcvae import nn

FEATURES, HIDDEN, LATENT, CLASSES = 784, 256, 16, 10


def init(gen: torch.Generator) -> dict:
    return {"encoder": {"hidden": nn.dense_init(gen, FEATURES + CLASSES, HIDDEN),
                        "mean": nn.dense_init(gen, HIDDEN, LATENT), "logvar": nn.dense_init(gen, HIDDEN, LATENT)},
            "decoder": {"hidden": nn.dense_init(gen, LATENT + CLASSES, HIDDEN),
                        "logits": nn.dense_init(gen, HIDDEN, FEATURES)}}


def encode(tree: dict, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z | x, c): one example (784,) and its one-hot label (10,) -> mean and log-variance, each (16,)."""
    h = torch.relu(nn.dense(tree["encoder"]["hidden"], torch.cat([x, c])))
    return nn.dense(tree["encoder"]["mean"], h), nn.dense(tree["encoder"]["logvar"], h)


def decode(tree: dict, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """p(x | z, c): the Bernoulli logits of the 784 pixels."""
    h = torch.relu(nn.dense(tree["decoder"]["hidden"], torch.cat([z, c])))
    return nn.dense(tree["decoder"]["logits"], h)


model = funcvae.Model(init=init, encode=encode, decode=decode, latent=LATENT, context=CLASSES,
                      likelihood="bernoulli", input_shape=(1, 28, 28))


def main(argv: list[str] | None = None) -> dict:
    """Train on the labelled images, score log p(x | y) and draw one row of each label; returns the history,
    the held-out IWAE bound (nats) and the samples (10, 1, 28, 28)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default=3, type=int)
    p.add_argument("--n-train", default=10000, type=int)
    p.add_argument("--n-test", default=500, type=int)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    x_train = funcvae.data.load("fashion-mnist", "train")[:args.n_train]
    y_train = funcvae.data.labels("fashion-mnist", "train")[:args.n_train]
    x_test = funcvae.data.load("fashion-mnist", "test")[:args.n_test]
    y_test = funcvae.data.labels("fashion-mnist", "test")[:args.n_test]
    params, history = funcvae.fit(model.init(seed=0), x_train, context=y_train, val_data=x_test, val_context=y_test,
                                  epochs=args.epochs, compile=False if args.no_compile else None, progress=False)
    for h in history:
        print(f"epoch {h['epoch']}: held-out -ELBO {h['val_loss']:.2f} nats per example")
    bound = funcvae.iwae(params, x_test, k=100, seed=0, context=y_test)
    print(f"held-out IWAE_100 {bound.mean():.2f} nats per example (a bound on log p(x | y))")
    samples = funcvae.sample(params, CLASSES, seed=0, context=torch.arange(CLASSES))
    return {"history": history, "iwae": float(bound.mean()), "samples": samples}


if __name__ == "__main__":
    main()
