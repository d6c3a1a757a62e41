"""A training loop of your own, the JAX way, from the public pieces alone: ``funcvae.loss_and_grad`` gives the
gradients (a ``Params``), the optimiser turns them into updates, ``funcvae.optim.apply_updates`` applies
them; every random number (batch order, the reparameterisation noise) comes from one explicit
``torch.Generator``. ``funcvae.fit`` does the same, plus compiling, checkpoints and guards.

    python3 examples/own_loop.py --epochs 5
"""

from __future__ import annotations

import argparse

import torch

import funcvae


def train(params: funcvae.Params, x: torch.Tensor, *, epochs: int, batch_size: int, lr: float, seed: int,
          objective=None) -> tuple[funcvae.Params, list[float]]:
    """Minibatch training of ``params`` on ``x`` (N, features); returns the params and each epoch's mean
    training ELBO (nats per example; with another objective, minus its mean loss)."""
    objective = funcvae.objectives.elbo() if objective is None else objective
    opt = funcvae.optim.adam(lr)
    opt_state = opt.init(params)
    gen = torch.Generator().manual_seed(seed)
    elbos, step = [], 0
    for epoch in range(1, epochs + 1):
        total = 0.0
        for rows in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            xb = x[rows]
            eps = torch.randn(xb.shape[0], objective.samples, params.model.latent, generator=gen)
            grads, (loss, terms) = funcvae.loss_and_grad(params, xb, eps, objective, count=step)
            updates, opt_state = opt.update(grads, opt_state, params)
            params = funcvae.optim.apply_updates(params, updates)
            total, step = total + float(terms["loss"].sum()), step + 1
        elbos.append(-total / x.shape[0])
        print(f"epoch {epoch}: ELBO {elbos[-1]:.2f} nats per example")
    return params, elbos


def main(argv: list[str] | None = None) -> tuple[funcvae.Params, list[float]]:
    args = _parser().parse_args(argv)
    x = funcvae.data.load(args.dataset, "train")[:args.n_train]
    params = funcvae.init(seed=args.seed, input_shape=funcvae.data.INPUT_SHAPES[args.dataset],
                          hidden=tuple(args.hidden), latent=args.latent)
    return train(params, x, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(funcvae.data.DATASETS))
    p.add_argument("--epochs", default=5, type=int)
    p.add_argument("--n-train", default=None, type=int, help="the first N training examples (default: all)")
    p.add_argument("--hidden", default=[400], type=int, nargs="*", help="hidden sizes (default: 400)")
    p.add_argument("--latent", default=20, type=int)
    p.add_argument("--batch-size", default=128, type=int)
    p.add_argument("--lr", default=1e-3, type=float)
    p.add_argument("--seed", default=0, type=int)
    return p


if __name__ == "__main__":
    main()
