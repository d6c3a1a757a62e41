"""A model of your own: the MLP of the IWAE paper (Burda, Grosse & Salakhutdinov 2016), written as three pure
functions of ONE example with ``funcvae.nn`` and made a ``funcvae.Model``.

Encoder 784-200-200-50 and decoder 50-200-200-784, tanh units, Bernoulli likelihood. Trained with
``funcvae.fit`` on the ELBO or on the IWAE bound (``--objective iwae --k 5``), scored by ``funcvae.elbo``
and ``funcvae.iwae``, saved and loaded back with ``load_params(path, model=model)``.

    python3 examples/custom_model.py --objective iwae --k 5 --epochs 10
    python3 -m funcvae train --model examples/custom_model.py:model --objective iwae

(the paper trains for 3^8 passes with a decaying learning rate on binarised MNIST; this trains for a few
epochs on the grey levels of the data set you name, which the Bernoulli likelihood reads as probabilities).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import funcvae
from funcvae import nn

SIZES = (784, 200, 200, 50)  # features, two hidden layers, latent


def init(generator: torch.Generator) -> dict:
    """The params: ``encoder`` hidden_0, hidden_1, mean, logvar and ``decoder`` hidden_0, hidden_1, logits."""
    features, h1, h2, latent = SIZES
    return {
        "encoder": {"hidden_0": nn.dense_init(generator, features, h1), "hidden_1": nn.dense_init(generator, h1, h2),
                    "mean": nn.dense_init(generator, h2, latent), "logvar": nn.dense_init(generator, h2, latent)},
        "decoder": {"hidden_0": nn.dense_init(generator, latent, h2), "hidden_1": nn.dense_init(generator, h2, h1),
                    "logits": nn.dense_init(generator, h1, features)},
    }


def encode(tree: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One example (784,) -> the mean and log-variance of q(z | x), each (50,)."""
    enc = tree["encoder"]
    h = torch.tanh(nn.dense(enc["hidden_1"], torch.tanh(nn.dense(enc["hidden_0"], x))))
    return nn.dense(enc["mean"], h), nn.dense(enc["logvar"], h)


def decode(tree: dict, z: torch.Tensor) -> torch.Tensor:
    """One latent (50,) -> the Bernoulli logits of the 784 pixels."""
    dec = tree["decoder"]
    h = torch.tanh(nn.dense(dec["hidden_1"], torch.tanh(nn.dense(dec["hidden_0"], z))))
    return nn.dense(dec["logits"], h)


model = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli", input_shape=(1, 28, 28),
                      latent=SIZES[-1])


def main(argv: list[str] | None = None) -> dict:
    """Train, score, save and load back; returns the history, the held-out scores (``elbo``, ``iwae`` and
    their standard errors, nats per example), the saved file's ``path`` and the ``params`` loaded from it."""
    args = _parser().parse_args(argv)
    x_train = funcvae.data.load(args.dataset, "train")[:args.n_train]
    x_test = funcvae.data.load(args.dataset, "test")[:args.n_test]
    objective = funcvae.objectives.iwae(args.k) if args.objective == "iwae" else funcvae.objectives.elbo()
    params, history = funcvae.fit(model.init(seed=args.seed), x_train, epochs=args.epochs, val_data=x_test,
                                  objective=objective, optimizer=funcvae.optim.adam(args.lr), seed=args.seed,
                                  batch_size=args.batch_size, compile=False if args.no_compile else None)
    for h in history:
        print(f"epoch {h['epoch']}: train loss {h['loss']:.2f}, held-out -ELBO {h['val_loss']:.2f} nats per example")
    scores = _scores(params, x_test, k=args.eval_k, seed=args.seed)
    print(f"held-out: ELBO {scores['elbo']:.2f} +- {scores['elbo_se']:.2f}, IWAE_{args.eval_k} {scores['iwae']:.2f} "
          f"+- {scores['iwae_se']:.2f} nats per example")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    funcvae.save_params(path, params)
    loaded = funcvae.load_params(path, model=model)  # a model of your own is passed back in: files hold no code
    same = all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(params).values(),
                                                  funcvae.leaves_by_path(loaded).values()))
    print(f"saved {path}; loaded back {'identical' if same else 'DIFFERENT'}")
    return {"history": history, **scores, "path": path, "params": loaded}


def _scores(params: funcvae.Params, x, *, k: int, seed: int) -> dict:
    """ELBO and IWAE_k of ``x`` (means over the examples and their standard errors, nats per example)."""
    out = {}
    for name, values in (("elbo", -funcvae.elbo(params, x, seed=seed)["loss"]),
                         ("iwae", funcvae.iwae(params, x, k=k, seed=seed))):
        values = values.double()
        out[name], out[f"{name}_se"] = float(values.mean()), float(values.std() / math.sqrt(len(values)))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=sorted(  # the model's 784 inputs: 28 x 28 only
        name for name, shape in funcvae.data.INPUT_SHAPES.items() if shape == (1, 28, 28)))
    p.add_argument("--objective", default="elbo", choices=("elbo", "iwae"))
    p.add_argument("--k", default=5, type=int, help="iwae: importance samples per example in training")
    p.add_argument("--epochs", default=5, type=int)
    p.add_argument("--n-train", default=None, type=int, help="the first N training examples (default: all)")
    p.add_argument("--n-test", default=None, type=int, help="the first N held-out examples (default: all)")
    p.add_argument("--batch-size", default=100, type=int)
    p.add_argument("--lr", default=1e-3, type=float)
    p.add_argument("--eval-k", default=100, type=int, help="importance samples of the held-out IWAE bound")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--no-compile", action="store_true", help="run the eager step")
    p.add_argument("--out", default="runs/custom_model.safetensors", help="where to save the params")
    return p


if __name__ == "__main__":
    main()
