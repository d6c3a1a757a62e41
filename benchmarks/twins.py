"""``torch.nn.Module`` twins of two functional funcvae models, for timing a compiled step of each side.

- ``LadderTwin``: the Ladder VAE of ``funcvae.ladder`` (same layers, same precision-weighted merge), batched.
- ``IAFTwin``: an MLP VAE whose posterior is the IAF head of ``funcvae.flows``: encoder 784-400 (ReLU) ->
  IAF; decoder latent-400-784 (ReLU), Bernoulli logits.

``forward(x, eps) -> loss`` is the negative ELBO averaged over the batch, in nats per example: the Bernoulli
reconstruction (``binary_cross_entropy_with_logits`` summed over pixels) plus the single-sample KL estimate
log q(z | x) - log p(z) (summed over the ladder's groups). x is (B, features); eps is (B, latent) for the IAF
twin and a dict {"z1": (B, latents[0]), ...} for the ladder.

Submodule names mirror the functional tree's paths, a ``Linear``'s weight and bias being a dense layer's kernel
and bias, so ``load_tree(twin, tree)`` copies a functional model's params in. The IAF twin's tree is
``{"encoder": {"hidden_0": dense, "iaf": flows.iaf_init(...)}, "decoder": {"hidden_0": dense, "out": dense}}``;
the ladder twin's is ``ladder.init(...)``'s. The MADE masks are written out here, not taken from funcvae, so the
equality of the two sides also checks them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from funcvae.flows import FORGET_BIAS, LOGVAR_RANGE
from funcvae.nn import ACTIVATIONS

LOG_2PI = math.log(2.0 * math.pi)


def _log_normal(z, mean, logvar):
    """log N(z; mean, exp(logvar)) summed over the last axis: (B, d) -> (B,)."""
    return (-0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar))).sum(-1)


def _recon(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def _block(n_in: int, width: int, latent: int) -> nn.ModuleDict:
    return nn.ModuleDict({"hidden": nn.Linear(n_in, width), "mean": nn.Linear(width, latent),
                          "logvar": nn.Linear(width, latent)})


class LadderTwin(nn.Module):
    """The Ladder VAE with bottom-up blocks ``encoder``, top-down priors ``top_down`` and ``decoder``."""

    def __init__(self, features=784, hidden=(512, 256), latents=(64, 32), activation="relu"):
        super().__init__()
        self.names = [f"z{i + 1}" for i in range(len(latents))]
        self.act = ACTIVATIONS[activation]
        widths = (features, *hidden[:-1])
        self.encoder = nn.ModuleDict({n: _block(w, h, z) for n, w, h, z in zip(self.names, widths, hidden, latents)})
        self.top_down = nn.ModuleDict({self.names[i]: _block(latents[i + 1], hidden[i], latents[i])
                                       for i in range(len(latents) - 1)})
        self.decoder = nn.ModuleDict({"hidden": nn.Linear(latents[0], hidden[0]), "out": nn.Linear(hidden[0], features)})

    def _gaussian(self, block, d):
        d = self.act(block["hidden"](d))
        return block["mean"](d), block["logvar"](d).clamp(*LOGVAR_RANGE)

    def forward(self, x, eps):
        up, d = [], x
        for name in self.names:
            block = self.encoder[name]
            d = self.act(block["hidden"](d))
            up.append((block["mean"](d), block["logvar"](d).clamp(*LOGVAR_RANGE)))
        kl, z = 0.0, None
        for i in reversed(range(len(self.names))):
            mean, logvar = up[i]
            if z is None:  # the top group: q(zL | x) against N(0, I)
                mean_p, logvar_p = torch.zeros_like(mean), torch.zeros_like(logvar)
            else:
                mean_p, logvar_p = self._gaussian(self.top_down[self.names[i]], z)
                logvar_q = -torch.logaddexp(-logvar, -logvar_p)
                mean = mean * torch.exp(logvar_q - logvar) + mean_p * torch.exp(logvar_q - logvar_p)
                logvar = logvar_q
            z = mean + torch.exp(0.5 * logvar) * eps[self.names[i]]
            kl = kl + _log_normal(z, mean, logvar) - _log_normal(z, mean_p, logvar_p)
        logits = self.decoder["out"](self.act(self.decoder["hidden"](z)))
        return (_recon(logits, x) + kl).mean()


class _Step(nn.Module):
    """One IAF step: a MADE with masks as buffers (constants, not parameters)."""

    def __init__(self, latent: int, hidden: int, reverse: bool):
        super().__init__()
        self.hidden, self.mean, self.scale = nn.Linear(latent, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        degrees = torch.arange(latent, 0, -1) if reverse else torch.arange(1, latent + 1)
        units = torch.arange(hidden) % latent
        self.register_buffer("mask_in", (units[:, None] >= degrees[None, :]).float(), persistent=False)
        self.register_buffer("mask_out", (degrees[:, None] > units[None, :]).float(), persistent=False)

    def forward(self, z, context):
        units = F.elu(F.linear(z, self.hidden.weight * self.mask_in, self.hidden.bias) + context)
        m = F.linear(units, self.mean.weight * self.mask_out, self.mean.bias)
        s = F.linear(units, self.scale.weight * self.mask_out, self.scale.bias) + FORGET_BIAS
        sigma = torch.sigmoid(s)
        return sigma * z + (1.0 - sigma) * m, F.logsigmoid(s).sum(-1)


class IAFTwin(nn.Module):
    """MLP VAE features-width (ReLU) -> IAF posterior; decoder latent-width-features (ReLU)."""

    def __init__(self, features=784, width=400, latent=20, steps=2, made_hidden=200):
        super().__init__()
        iaf = nn.ModuleDict({"mean": nn.Linear(width, latent), "logvar": nn.Linear(width, latent),
                             "context": nn.Linear(width, made_hidden)})
        for t in range(steps):
            iaf[f"step_{t}"] = _Step(latent, made_hidden, reverse=t % 2 == 1)
        self.steps = steps
        self.encoder = nn.ModuleDict({"hidden_0": nn.Linear(features, width), "iaf": iaf})
        self.decoder = nn.ModuleDict({"hidden_0": nn.Linear(latent, width), "out": nn.Linear(width, features)})

    def forward(self, x, eps):
        h = F.relu(self.encoder["hidden_0"](x))
        iaf = self.encoder["iaf"]
        mean, logvar = iaf["mean"](h), iaf["logvar"](h).clamp(*LOGVAR_RANGE)
        context = iaf["context"](h)
        z = mean + torch.exp(0.5 * logvar) * eps
        log_q = _log_normal(z, mean, logvar)
        for t in range(self.steps):
            z, log_sigma = iaf[f"step_{t}"](z, context)
            log_q = log_q - log_sigma
        kl = log_q - _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        logits = self.decoder["out"](F.relu(self.decoder["hidden_0"](z)))
        return (_recon(logits, x) + kl).mean()


def _leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def load_tree(module: nn.Module, tree: dict) -> nn.Module:
    """Copy a functional tree's tensors into ``module``'s parameters by path (kernel -> weight); every parameter
    must be matched by exactly one leaf. Returns the module."""
    names = {".".join((*path[:-1], "weight" if path[-1] == "kernel" else path[-1])): leaf
             for path, leaf in _leaves(tree)}
    params = dict(module.named_parameters())
    if names.keys() != params.keys():
        raise KeyError(f"tree and module differ: only in the tree {sorted(names.keys() - params.keys())}, "
                       f"only in the module {sorted(params.keys() - names.keys())}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(names[name])
    return module
