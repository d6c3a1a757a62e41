"""``fit``: minibatch training of a VAE's params (one model or a stack) with Adam on the (beta-weighted)
negative ELBO, through one compiled step."""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from typing import Callable, Sequence

import optree
import torch
from torch import Tensor
from tqdm.auto import tqdm

from funcvae.compiling import make_step
from funcvae.distributions import check_support
from funcvae.elbo import TERMS, evaluate
from funcvae.model import Params, stack_size
from funcvae.optim import adam
from funcvae.rng import generator
from funcvae.step import dp_train_step, pad_rows, stacked_train_step, train_step
from funcvae.validate import as_examples, check_int, check_nonnegative, check_positive

BINARIZE = (None, "dynamic")


def fit(params: Params, data, *, epochs: int, batch_size: int = 128, lr: float | Sequence[float] = 1e-3,
        seed: int | Sequence[int] = 0, val_data=None, beta: float | Sequence[float] = 1.0, kl_warmup: float = 0,
        binarize: str | None = None, scale: float | None = None, clip_norm: float | None = None,
        noise_multiplier: float = 0.0, compile: bool | str | Callable | None = None,
        progress: bool | None = None, callback: Callable[[dict], None] | None = None):
    """Train ``params`` on ``data``; returns new params and the per-epoch history (inputs are not modified).

    Args:
      params: from ``funcvae.init`` (any architecture), or a stack of N models from ``funcvae.stack``,
        trained together in one vmapped step; training runs on their device.
      data: training examples: tensor, numpy array, Dataset or DataLoader (read once; fit batches the
        examples itself in a seeded order), shaped (N, F), (N, H, W) or (N, C, H, W).
      epochs: passes over the data.
      batch_size: examples per step; the last batch of an epoch may be smaller (no example is dropped).
      lr: Adam's learning rate.
      seed: names every random draw of the run (order, noise, binarisation): same seed, same data and
        same params give the same result, bit for bit on CPU. For a stack, ``seed``, ``lr`` and ``beta``
        may each be one value for all models or a sequence with one per model; model i of a stack
        trains exactly as ``fit`` of that model alone with its own seed, lr and beta would.
      val_data: held-out examples, evaluated after each epoch with the same noise every epoch.
      beta: KL weight of the objective ``recon + beta * kl``.
      kl_warmup: epochs over which the KL weight rises linearly from 0 to ``beta`` (step by step).
      binarize: "dynamic" draws binary pixels ~ Bernoulli(data) afresh for every batch (val data get one
        fixed draw), making the Bernoulli likelihood a true likelihood on grey-level images.
      scale: divide integer pixel data by this (e.g. 255).
      clip_norm: DP-SGD style: clip each example's gradient to this L2 norm (over all params) before
        averaging (per-example gradients by ``vmap(grad)``); None trains on the plain batch gradient.
      noise_multiplier: with ``clip_norm``, add Gaussian noise of std ``noise_multiplier * clip_norm`` to
        the summed clipped gradients (drawn from the run's seeded stream).
      compile: compile the whole step (loss, gradients, Adam) into one graph with ``torch.compile``.
        None (default): where a GPU or a C++ compiler is present, else a warning and the eager step;
        False: eager; a backend name or callable: that ``torch.compile`` backend. Compiling costs seconds
        once per run (about 10 s on 2 CPU cores cold, about 1 s with a warm cache) and is traced once.
      progress: show a progress bar; default: only when stderr is a terminal.
      callback: called with each epoch's history record as soon as it is complete.

    Returns:
      ``(params, history)``. ``history`` has one dict per epoch with ``epoch``, ``recon``, ``kl``, ``loss``
      (training averages over the epoch, nats per example), ``val_recon``, ``val_kl``, ``val_loss``
      (over the whole held-out set; None without ``val_data``), ``beta`` (KL weight at the epoch's end)
      and ``seconds``. ``loss`` is always ``recon + beta * kl`` with the target ``beta``, so epochs stay
      comparable during warm-up (= -ELBO at beta = 1). For a stack: the stacked params and a list of
      N such histories.
    """
    n_models = stack_size(params)
    seeds, lrs, betas = _per_model(n_models, seed=seed, lr=lr, beta=beta)
    check_settings(epochs=epochs, batch_size=batch_size, lr=lrs, beta=betas, kl_warmup=kl_warmup, binarize=binarize,
                   clip_norm=clip_norm, noise_multiplier=noise_multiplier, stacked=n_models is not None)
    for s in seeds:
        check_int("seed", s, minimum=0)
    like = optree.tree_leaves(params.tree)[0]
    x = _examples(data, params, scale, like, binarize, "data")
    x_vals = None if val_data is None else _val_sets(_examples(val_data, params, scale, like, binarize, "val_data"),
                                                     seeds, binarize)
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({x.shape[0]} examples)")

    spec, tree = params.spec, params.tree
    step = make_step(_step_function(spec, n_models, lrs, clip_norm, like), x.device, compile)
    opt_state = adam(1.0 if n_models else lrs[0]).init(tree)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    warmup_steps = kl_warmup * steps_per_epoch
    target = torch.tensor(betas, dtype=x.dtype, device=x.device)
    show = sys.stderr.isatty() if progress is None else progress
    histories = [[] for _ in seeds]
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        # One stream per model and epoch: epoch k's draws depend on (seed, k) alone, so a run resumed at an
        # epoch boundary continues with exactly the numbers of an uninterrupted one.
        gens = [generator(s, "train", epoch, device=x.device) for s in seeds]
        sums = torch.zeros(len(seeds), len(TERMS), dtype=x.dtype, device=x.device)
        batches = tqdm(_model_batches(x, batch_size, gens, spec.latent, binarize, n_models), total=steps_per_epoch,
                       desc=f"epoch {epoch}/{epochs}", disable=not show, leave=False, file=sys.stderr)
        for i, (xb, eps, weights) in enumerate(batches):
            warm = min(1.0, ((epoch - 1) * steps_per_epoch + i + 1) / warmup_steps) if warmup_steps else 1.0
            beta_now = target * warm if n_models else target[0] * warm
            extra = () if clip_norm is None else (_dp_noise(tree, gens[0], clip_norm * noise_multiplier),)
            tree, opt_state, batch_sums = step(tree, opt_state, xb, eps, beta_now, weights, *extra)
            sums += batch_sums.view(len(seeds), len(TERMS))
        trees = [tree] if n_models is None else [optree.tree_map(lambda t: t[m], tree) for m in range(n_models)]
        for m, history in enumerate(histories):
            record = _epoch_record(epoch, sums[m], x.shape[0], betas[m], betas[m] * warm)
            if x_vals is not None:
                val = evaluate(spec, trees[m], x_vals[m], generator(seeds[m], "val", device=x.device), beta=betas[m])
                record.update({f"val_{k}": float(v.mean()) for k, v in val.items()})
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            if callback is not None:
                callback(record if n_models is None else {**record, "model": m})
    return Params(spec, tree), histories[0] if n_models is None else histories


def _step_function(spec, n_models, lrs, clip_norm, like) -> Callable:
    if n_models is not None:
        return partial(stacked_train_step, spec, adam(1.0), torch.tensor(lrs, dtype=like.dtype, device=like.device))
    if clip_norm is not None:
        return partial(dp_train_step, spec, adam(lrs[0]), clip_norm)
    return partial(train_step, spec, adam(lrs[0]))


def _examples(data, params: Params, scale, like: Tensor, binarize, name: str) -> Tensor:
    x = as_examples(data, params.spec, scale=scale, like=like, name=name)
    if binarize == "dynamic":  # pixels become Bernoulli probabilities, whatever the likelihood
        check_support("bernoulli", x, name=name)
    return x


def _val_sets(x_val: Tensor, seeds: list[int], binarize) -> list[Tensor]:
    """The held-out set each model is scored on: one fixed binary draw per seed under dynamic binarisation."""
    if binarize != "dynamic":
        return [x_val] * len(seeds)
    return [torch.bernoulli(x_val, generator=generator(s, "val-binarize", device=x_val.device)) for s in seeds]


def _model_batches(x, batch_size, gens, latent, binarize, n_models):
    """Each model's batches from its own stream; for a stack, stacked along a new leading dimension."""
    streams = [epoch_batches(x, batch_size, g, latent, binarize) for g in gens]
    for per_model in zip(*streams):
        if n_models is None:
            yield per_model[0]
        else:
            xs, eps, weights = zip(*per_model)
            yield torch.stack(xs), torch.stack(eps), weights[0]  # same sizes, so the same padding mask


def epoch_batches(x: Tensor, batch_size: int, gen: torch.Generator, latent: int, binarize: str | None):
    """One epoch's batches in a seeded order: ``(x, eps, weights)`` of static shapes (batch_size, ...); the
    last batch is zero-padded and its padding rows weighted 0, so no example is dropped or counted twice."""
    order = torch.randperm(x.shape[0], generator=gen, device=x.device)
    full = torch.ones(batch_size, dtype=x.dtype, device=x.device)
    for idx in order.split(batch_size):
        xb = x[idx]
        if binarize == "dynamic":
            xb = torch.bernoulli(xb, generator=gen)
        eps = torch.randn(idx.numel(), 1, latent, generator=gen, device=x.device, dtype=x.dtype)
        weights = full if idx.numel() == batch_size else pad_rows(full[:idx.numel()], batch_size)
        yield pad_rows(xb, batch_size), pad_rows(eps, batch_size), weights


def _dp_noise(tree: dict, gen: torch.Generator, std: float) -> dict:
    return optree.tree_map(lambda t: std * torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype), tree)


def _per_model(n_models: int | None, **values) -> list[list]:
    """Each of ``values`` as a list with one entry per model (one entry without a stack)."""
    out = []
    for name, value in values.items():
        if isinstance(value, (list, tuple)):
            if n_models is None or len(value) != n_models:
                where = "a stack of that many models" if n_models is None else f"the stack's {n_models} models"
                raise ValueError(f"{name} has {len(value)} values; a sequence needs {where}")
            out.append(list(value))
        else:
            out.append([value] * (n_models or 1))
    return out


def _epoch_record(epoch: int, sums: Tensor, n: int, beta: float, beta_now) -> dict:
    recon, kl, _ = (sums / n).tolist()  # one device read per epoch
    return {"epoch": epoch, "recon": recon, "kl": kl, "loss": recon + beta * kl,
            "val_recon": None, "val_kl": None, "val_loss": None, "beta": float(beta_now)}


def check_settings(*, epochs, batch_size, lr, beta, kl_warmup, binarize, clip_norm=None, noise_multiplier=0.0,
                   stacked=False) -> None:
    """Raise ValueError naming the first of ``fit``'s settings that is out of range (``lr`` and ``beta``
    may be lists, one value per model)."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    for value in lr if isinstance(lr, (list, tuple)) else [lr]:
        check_positive("lr", value)
    for value in beta if isinstance(beta, (list, tuple)) else [beta]:
        check_nonnegative("beta", value)
    check_nonnegative("kl_warmup", kl_warmup)
    if binarize not in BINARIZE:
        raise ValueError(f"binarize must be one of {BINARIZE} (static binarisation is a data.load option), "
                         f"got {binarize!r}")
    check_nonnegative("noise_multiplier", noise_multiplier)
    if clip_norm is not None:
        check_positive("clip_norm", clip_norm)
        if stacked:
            raise ValueError("clip_norm (per-example clipping) trains one model at a time, not a stack")
    elif noise_multiplier:
        raise ValueError("noise_multiplier needs clip_norm: the noise is scaled to the clipping norm")
