"""The built-in models, made through the same public ``Model`` as any user's: an MLP and a strided conv net.

``mlp(...)`` and ``conv(...)`` return a ``Model`` whose ``spec`` (a ``ModelSpec``) says how to rebuild it, so
their files load without the model being passed. The same spec always gives the same ``Model`` object (so
its compiled step is reused).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from funcvae import likelihoods, nn, priors
from funcvae.model import Model, Params

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
PRIORS = ("normal", "vamp")


@dataclass(frozen=True)
class ModelSpec:
    """What a built-in VAE is.

    Attributes:
      arch: "mlp" (dense layers) or "conv" (strided convolutions, then dense layers).
      input_shape: (channels, height, width) of one example.
      hidden: dense hidden sizes of the encoder; the decoder mirrors them.
      latent: latent dimension.
      activation: a key of ``funcvae.nn.ACTIVATIONS``.
      channels: conv only, channels of each stride-2 convolution (each halves height and width).
      likelihood: "bernoulli" (decoder gives logits) or "gaussian" (decoder gives the mean).
      obs_std: gaussian only: a fixed observation std, or None to learn a per-pixel log-variance.
      prior: "normal" (N(0, I)) or "vamp" (the VampPrior).
      pseudo_inputs: vamp only: its number of pseudo-inputs.
    """

    arch: str = "mlp"
    input_shape: tuple[int, int, int] = (1, 28, 28)
    hidden: tuple[int, ...] = (400,)
    latent: int = 20
    activation: str = "relu"
    channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"
    obs_std: float | None = None
    prior: str = "normal"
    pseudo_inputs: int = 500

    def __post_init__(self):
        for name in ("input_shape", "hidden", "channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        _require(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        _require(self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        _require(self.prior in PRIORS, f"prior must be one of {PRIORS}, got {self.prior!r}")
        _require(self.activation in nn.ACTIVATIONS,
                 f"activation must be one of {tuple(nn.ACTIVATIONS)}, got {self.activation!r}")
        _require(len(self.input_shape) == 3 and min(self.input_shape) >= 1,
                 f"input_shape must be (channels, height, width), got {self.input_shape}")
        _require(self.latent >= 1 and all(h >= 1 for h in self.hidden), "latent and hidden sizes must be >= 1")
        _require(isinstance(self.pseudo_inputs, int) and self.pseudo_inputs >= 1,
                 f"pseudo_inputs must be an int >= 1, got {self.pseudo_inputs!r}")
        if self.arch == "conv":
            factor = 2 ** len(self.channels)
            _require(len(self.channels) >= 1 and all(c >= 1 for c in self.channels), "conv needs channels >= 1")
            _require(self.input_shape[1] % factor == 0 and self.input_shape[2] % factor == 0,
                     f"conv with {len(self.channels)} stride-2 layers needs height and width divisible by "
                     f"{factor}, got {self.input_shape[1:]}")
        if self.obs_std is not None:
            _require(self.likelihood == "gaussian", "obs_std applies to the gaussian likelihood only")
            _require(math.isfinite(self.obs_std) and self.obs_std > 0, f"obs_std must be > 0, got {self.obs_std}")

    @property
    def features(self) -> int:
        """Numbers in one flattened example (784 for 1x28x28)."""
        return math.prod(self.input_shape)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**d)


@functools.lru_cache(maxsize=None)
def from_spec(spec: ModelSpec) -> Model:
    """The built-in ``Model`` a spec describes (one object per spec)."""
    likelihood = likelihoods.bernoulli() if spec.likelihood == "bernoulli" else likelihoods.gaussian(spec.obs_std)
    prior = priors.standard_normal() if spec.prior == "normal" else priors.vamp(spec.pseudo_inputs)
    return Model(init=partial(_init, spec), encode=partial(_encode, spec), decode=partial(_decode, spec),
                 likelihood=likelihood, input_shape=spec.input_shape, latent=spec.latent, prior=prior, spec=spec)


def mlp(**fields) -> Model:
    """An MLP VAE: ``ModelSpec`` fields with ``arch="mlp"`` (default 784-400-20, ReLU, Bernoulli)."""
    return from_spec(ModelSpec(arch="mlp", **fields))


def conv(**fields) -> Model:
    """A conv VAE: ``ModelSpec`` fields with ``arch="conv"`` (4x4 stride-2 convolutions, then dense layers)."""
    return from_spec(ModelSpec(arch="conv", **fields))


def _init(spec: ModelSpec, gen: torch.Generator) -> dict:
    encoder, decoder = {}, {}
    width = spec.features
    if spec.arch == "conv":
        c_in, size = spec.input_shape[0], spec.input_shape[1:]
        for i, c_out in enumerate(spec.channels):
            encoder[f"conv_{i}"] = nn.conv_init(gen, c_in, c_out, 4)
            c_in = c_out
        width = c_in * (size[0] >> len(spec.channels)) * (size[1] >> len(spec.channels))
    for i, h in enumerate(spec.hidden):
        encoder[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    encoder["mean"] = nn.dense_init(gen, width, spec.latent)
    encoder["logvar"] = nn.dense_init(gen, width, spec.latent)

    width = spec.latent
    for i, h in enumerate(reversed(spec.hidden)):
        decoder[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    if spec.arch == "conv":
        decoder["project"] = nn.dense_init(gen, width, _conv_bottleneck(spec))
        outs = list(reversed(spec.channels[:-1])) + [spec.input_shape[0]]
        c_in = spec.channels[-1]
        for i, c_out in enumerate(outs):
            decoder[f"deconv_{i}"] = nn.conv_transpose_init(gen, c_in, c_out, 4)
            c_in = c_out
    else:
        decoder["out"] = nn.dense_init(gen, width, spec.features)
    if spec.likelihood == "gaussian" and spec.obs_std is None:
        decoder["obs_logvar"] = torch.zeros(spec.features)
    return {"encoder": encoder, "decoder": decoder}


def _conv_bottleneck(spec: ModelSpec) -> int:
    n = len(spec.channels)
    return spec.channels[-1] * (spec.input_shape[1] >> n) * (spec.input_shape[2] >> n)


def _encode(spec: ModelSpec, tree: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    act = nn.ACTIVATIONS[spec.activation]
    enc = tree["encoder"]
    h = x
    if spec.arch == "conv":
        h = h.reshape(spec.input_shape)
        for i in range(len(spec.channels)):
            h = act(nn.conv(enc[f"conv_{i}"], h, stride=2, padding=1))
        h = h.reshape(-1)
    for i in range(len(spec.hidden)):
        h = act(nn.dense(enc[f"hidden_{i}"], h))
    return nn.dense(enc["mean"], h), nn.dense(enc["logvar"], h)


def _decode(spec: ModelSpec, tree: dict, z: Tensor):
    act = nn.ACTIVATIONS[spec.activation]
    dec = tree["decoder"]
    h = z
    for i in range(len(spec.hidden)):
        h = act(nn.dense(dec[f"hidden_{i}"], h))
    if spec.arch == "mlp":
        out = nn.dense(dec["out"], h)
    else:
        n = len(spec.channels)
        h = act(nn.dense(dec["project"], h)).reshape(
            spec.channels[-1], spec.input_shape[1] >> n, spec.input_shape[2] >> n)
        for i in range(n):
            h = nn.conv_transpose(dec[f"deconv_{i}"], h, stride=2, padding=1)
            if i < n - 1:
                h = act(h)
        out = h.reshape(-1)
    if spec.likelihood == "gaussian" and spec.obs_std is None:
        return out, dec["obs_logvar"]
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def init(seed: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
         **fields) -> "Params":
    """Fresh params of the built-in model that ``fields`` describe (``ModelSpec`` fields, e.g.
    ``arch="conv"``, ``hidden=(512, 256)``, ``latent=32``); the default is the classic MLP VAE 784-400-20 with
    a Bernoulli decoder. The same seed gives the same params."""
    return from_spec(ModelSpec(**fields)).init(seed, dtype=dtype, device=device)
