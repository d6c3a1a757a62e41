"""funcvae: variational autoencoders as pure functions over parameter pytrees, with torch.func.

    import funcvae
    x_train = funcvae.data.load("fashion-mnist", "train")
    params = funcvae.init(seed=0)                       # MLP 784-400-20, Bernoulli decoder
    params, history = funcvae.fit(params, x_train, epochs=10, seed=0)
    terms = funcvae.elbo(params, x_train[:100], seed=1) # per-example recon, kl, loss in nats

A model of your own is ``funcvae.Model(init=..., encode=..., decode=..., ...)``: see ``funcvae.model``.
"""

from funcvae.gemm import reproducible_mkl as _reproducible_mkl

_reproducible_mkl()  # first: MKL takes its reproducibility mode at its first call

from funcvae import (data, diagnostics, distributions, likelihoods, lock, models, nn, objectives, optim, priors, quality,
                     records, schedules)
from funcvae.checkpoint import Checkpoint, load, load_params, save, save_params
from funcvae.codec import decode, encode
from funcvae.config import FitConfig
from funcvae.elbo import elbo
from funcvae.importance import iwae
from funcvae.interrupt import Interrupted
from funcvae.lock import FolderLocked
from funcvae.model import Model, Params, leaves_by_path
from funcvae.models import ModelSpec, init
from funcvae.objectives import loss_and_grad
from funcvae.per_example import gradient_snr, per_example_grads
from funcvae.stack import stack, unstack
from funcvae.step import Batch, TrainState, init_state, make_train_step
from funcvae.train import CHECKPOINT_FILE, NonFiniteError, fit

__all__ = [
    "Batch", "CHECKPOINT_FILE", "Checkpoint", "FitConfig", "FolderLocked", "Interrupted", "Model", "ModelSpec",
    "NonFiniteError", "Params", "TrainState", "data", "decode", "diagnostics", "distributions", "elbo", "encode", "fit",
    "gradient_snr", "init", "init_state", "iwae", "leaves_by_path", "likelihoods", "load", "load_params", "lock",
    "loss_and_grad", "make_train_step", "models", "nn", "objectives", "optim", "per_example_grads", "priors",
    "quality", "records", "save", "save_params", "schedules", "stack", "unstack",
]
