"""funcvae: variational autoencoders as pure functions over parameter pytrees, with torch.func.

    import funcvae
    x_train = funcvae.data.load("fashion-mnist", "train")
    params = funcvae.init(seed=0)                       # MLP 784-400-20, Bernoulli decoder
    params, history = funcvae.fit(params, x_train, epochs=10, seed=0)
    terms = funcvae.elbo(params, x_train[:100], seed=1) # per-example recon, kl, loss in nats

A model of your own is ``funcvae.Model(init=..., posterior=..., decode=..., prior=..., latent=...)`` (or
``encode=`` for a diagonal Gaussian posterior): see ``funcvae.model`` and docs/models.md.
"""

from funcvae._runtime.gemm import reproducible_mkl as _reproducible_mkl

_reproducible_mkl()  # first: MKL takes its reproducibility mode at its first call

from funcvae import _moved
# A model: params are a pytree beside the model that reads them; built-in architectures or your own.
from funcvae.model import Model, Params, leaves_by_path
from funcvae.models import ModelSpec, init
from funcvae.codec import decode, encode
from funcvae.sampling import sample
# Bounds on log p(x), per example, in nats.
from funcvae.bounds import elbo
from funcvae.importance import iwae
# Training: one pure step, and fit around it.
from funcvae.step import Batch, TrainState, init_state, make_train_step
from funcvae.objectives import loss_and_grad
from funcvae.config import FitConfig
from funcvae.train import CHECKPOINT_FILE, NonFiniteError, fit
from funcvae._runtime.interrupt import Interrupted
from funcvae._runtime.lock import FolderLocked
# Many models at once, and per-example gradients.
from funcvae.stacks import stack, unstack
from funcvae.per_example import gradient_snr, per_example_grads
# Files.
from funcvae.checkpoint import Checkpoint, load, load_params, save, save_params
# The building blocks, by concern.
from funcvae import (callbacks, data, diagnostics, distributions, flows, ladder, likelihoods, models, nn, objectives,
                     optim, priors, quality, schedules, shorthand)

__all__ = [
    # a model
    "Model", "Params", "ModelSpec", "init", "encode", "decode", "sample", "leaves_by_path",
    # bounds
    "elbo", "iwae",
    # training
    "fit", "FitConfig", "callbacks", "make_train_step", "init_state", "TrainState", "Batch", "loss_and_grad",
    "NonFiniteError", "Interrupted", "FolderLocked", "CHECKPOINT_FILE",
    # many models, per-example gradients
    "stack", "unstack", "per_example_grads", "gradient_snr",
    # files
    "save_params", "load_params", "save", "load", "Checkpoint",
    # building blocks
    "nn", "models", "flows", "ladder", "likelihoods", "priors", "distributions", "objectives", "optim", "schedules",
    "shorthand",
    "data", "diagnostics", "quality",
]
__getattr__ = _moved.module_getattr(__name__, {old.removeprefix("funcvae."): new for old, new in _moved.MODULES.items()})
_moved.install()
