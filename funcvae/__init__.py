"""funcvae: variational autoencoders as pure functions over parameter pytrees, with torch.func.

    import funcvae
    x_train = funcvae.data.load("fashion-mnist", "train")
    params = funcvae.init(seed=0)                       # MLP 784-400-20, Bernoulli decoder
    params, history = funcvae.fit(params, x_train, epochs=10, seed=0)
    terms = funcvae.elbo(params, x_train[:100], seed=1) # per-example recon, kl, loss in nats
"""

from funcvae import data, distributions, nn, optim
from funcvae.checkpoint import Checkpoint, load, load_params, save, save_params
from funcvae.elbo import elbo, example_terms
from funcvae.model import ModelSpec, Params, init, leaves_by_path
from funcvae.per_example import gradient_snr, per_example_grads
from funcvae.stack import stack, unstack
from funcvae.codec import decode, encode
from funcvae.interrupt import Interrupted
from funcvae.train import NonFiniteError, fit

__all__ = [
    "Checkpoint", "Interrupted", "ModelSpec", "NonFiniteError", "Params", "load", "save", "data", "decode", "distributions", "elbo", "encode", "example_terms", "fit", "init", "nn",
    "gradient_snr", "leaves_by_path", "load_params", "optim", "per_example_grads", "save_params", "stack", "unstack",
]
