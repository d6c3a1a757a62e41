"""A hierarchical VAE written by hand, as a user would: the IWAE paper's two stochastic layers (Burda, Grosse &
Salakhutdinov 2016), x -> z1 -> z2, through ``funcvae.Model``'s general contract.

    q(z1 | x) q(z2 | z1)   (bottom-up: each layer's Gaussian from the one below)
    p(z2) p(z1 | z2) p(x | z1)

``posterior(tree, x, eps)`` draws z = {"z1", "z2"} from the noise eps = {"z1", "z2"} and returns log q per group;
the prior is ``funcvae.priors.custom(log_prob, sample)`` with log p per group, so ``fit``'s history, ``eval`` and
the verdicts show the KL of each layer and name a collapsed one. Smaller than the paper's (784-100-(50)-50-(25)
units here against 200/100 and 100/50) so that it trains in a minute:

    python3 examples/two_layer.py --epochs 3 --n-train 10000
    python3 -m funcvae train --model examples/two_layer.py:model --kl-warmup 2 --free-bits 0.5
"""

from __future__ import annotations

import argparse

import torch

import funcvae
from funcvae import nn
from funcvae.distributions import gaussian_log_prob, standard_normal_log_prob

FEATURES, H1, Z1, H2, Z2 = 784, 100, 50, 50, 25
LATENT = {"z1": Z1, "z2": Z2}


def gaussian_init(gen: torch.Generator, n_in: int, hidden: int, n_out: int) -> dict:
    """A one-hidden-layer net to a Gaussian's mean and log-variance."""
    return {"hidden": nn.dense_init(gen, n_in, hidden), "mean": nn.dense_init(gen, hidden, n_out),
            "logvar": nn.dense_init(gen, hidden, n_out)}


def gaussian(net: dict, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.tanh(nn.dense(net["hidden"], v))
    return nn.dense(net["mean"], h), nn.dense(net["logvar"], h).clamp(-10.0, 10.0)


def init(gen: torch.Generator) -> dict:
    return {"q_z1": gaussian_init(gen, FEATURES, H1, Z1), "q_z2": gaussian_init(gen, Z1, H2, Z2),
            "p_z1": gaussian_init(gen, Z2, H2, Z1),
            "p_x": {"hidden": nn.dense_init(gen, Z1, H1), "logits": nn.dense_init(gen, H1, FEATURES)}}


def posterior(tree: dict, x: torch.Tensor, eps: dict) -> tuple[dict, dict]:
    """One draw of q(z1 | x) q(z2 | z1) and its log-density per layer (nats)."""
    m1, lv1 = gaussian(tree["q_z1"], x)
    z1 = m1 + torch.exp(0.5 * lv1) * eps["z1"]
    m2, lv2 = gaussian(tree["q_z2"], z1)
    z2 = m2 + torch.exp(0.5 * lv2) * eps["z2"]
    return {"z1": z1, "z2": z2}, {"z1": gaussian_log_prob(m1, lv1, z1).sum(), "z2": gaussian_log_prob(m2, lv2, z2).sum()}


def log_prior(tree: dict, z: dict) -> dict:
    """log p(z2) and log p(z1 | z2), nats."""
    m1, lv1 = gaussian(tree["p_z1"], z["z2"])
    return {"z1": gaussian_log_prob(m1, lv1, z["z1"]).sum(), "z2": standard_normal_log_prob(z["z2"]).sum()}


def sample_prior(tree: dict, eps: dict) -> dict:
    """Ancestral sampling: z2 ~ p(z2), then z1 ~ p(z1 | z2)."""
    m1, lv1 = gaussian(tree["p_z1"], eps["z2"])
    return {"z1": m1 + torch.exp(0.5 * lv1) * eps["z1"], "z2": eps["z2"]}


def decode(tree: dict, z: dict) -> torch.Tensor:
    """The Bernoulli logits of p(x | z1)."""
    return nn.dense(tree["p_x"]["logits"], torch.tanh(nn.dense(tree["p_x"]["hidden"], z["z1"])))


model = funcvae.Model(init=init, posterior=posterior, decode=decode, latent=LATENT,
                      prior=funcvae.priors.custom(log_prob=log_prior, sample=sample_prior),
                      likelihood="bernoulli", input_shape=(1, 28, 28))


def main(argv: list[str] | None = None) -> dict:
    """Train, then score the held-out images; returns the history and the held-out IWAE bound (nats)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", default=3, type=int)
    p.add_argument("--n-train", default=10000, type=int)
    p.add_argument("--n-test", default=500, type=int)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    x_train = funcvae.data.load("fashion-mnist", "train")[:args.n_train]
    x_test = funcvae.data.load("fashion-mnist", "test")[:args.n_test]
    params, history = funcvae.fit(model.init(seed=0), x_train, epochs=args.epochs, val_data=x_test, kl_warmup=1,
                                  free_bits=0.5, compile=False if args.no_compile else None, progress=False)
    for h in history:
        groups = ", ".join(f"{g} {v:.2f}" for g, v in h["val_kl_groups"].items())
        print(f"epoch {h['epoch']}: held-out -ELBO {h['val_loss']:.2f} nats (KL by layer: {groups})")
    bound = funcvae.iwae(params, x_test, k=100, seed=0)
    print(f"held-out IWAE_100 {bound.mean():.2f} nats per example")
    return {"history": history, "iwae": float(bound.mean()), "params": params}


if __name__ == "__main__":
    main()
