"""The VAE: an architecture spec, its parameter pytree, and the pure encoder and decoder.

How the architecture travels with the params: ``init`` returns a ``Params`` node holding the static
``ModelSpec`` (sizes, activation, likelihood) beside the tree of tensors. ``Params`` is registered with
optree (namespace ``"funcvae"``) and with torch's pytree, so ``torch.func`` transforms and
``optree.tree_map(..., namespace="funcvae")`` see only the tensors and carry the spec through as
metadata. ``fit``, ``elbo``, ``encode`` and ``decode`` need nothing but a ``Params``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import optree
import torch
import torch.utils._pytree as torch_pytree
from torch import Tensor

from funcvae import nn
from funcvae.rng import generator

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
# A learned Gaussian variance is floored at the variance of 8-bit quantisation noise on [0, 1] data,
# (1/255)^2/12: a density narrower than one grey level measures rounding, not the image, and would let
# constant pixels drive the likelihood to +inf.
MIN_OBS_LOGVAR = math.log((1.0 / 255.0) ** 2 / 12.0)
# The posterior's log-variance is kept where exp() of it (and of half of it) is finite and far from float32's
# limits: variances from 2e-13 to 5e8 cover every useful posterior, and a wild encoder output early in
# training can no longer overflow the KL or the sample.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a VAE; everything a pure apply needs beside the tensors.

    Attributes:
      arch: "mlp" (dense layers) or "conv" (strided convolutions, then dense layers).
      input_shape: (channels, height, width) of one example.
      hidden: dense hidden sizes of the encoder; the decoder mirrors them.
      latent: latent dimension.
      activation: a key of ``funcvae.nn.ACTIVATIONS``.
      channels: conv only, channels of each stride-2 convolution (each halves height and width).
      likelihood: "bernoulli" (decoder gives logits) or "gaussian" (decoder gives the mean).
      obs_std: gaussian only: a fixed observation std, or None to learn a per-pixel log-variance.
    """

    arch: str = "mlp"
    input_shape: tuple[int, int, int] = (1, 28, 28)
    hidden: tuple[int, ...] = (400,)
    latent: int = 20
    activation: str = "relu"
    channels: tuple[int, ...] = (32, 64)
    likelihood: str = "bernoulli"
    obs_std: float | None = None

    def __post_init__(self):
        for name in ("input_shape", "hidden", "channels"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        _require(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        _require(self.likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        _require(self.activation in nn.ACTIVATIONS,
                 f"activation must be one of {tuple(nn.ACTIVATIONS)}, got {self.activation!r}")
        _require(len(self.input_shape) == 3 and min(self.input_shape) >= 1,
                 f"input_shape must be (channels, height, width), got {self.input_shape}")
        _require(self.latent >= 1 and all(h >= 1 for h in self.hidden), "latent and hidden sizes must be >= 1")
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


@dataclass(frozen=True, eq=False)
class Params:
    """A VAE's parameters: ``tree`` (nested dicts of tensors, leaves addressed by path such as
    ``encoder/hidden_0/kernel``) and the static ``spec`` that says how to apply them."""

    spec: ModelSpec
    tree: dict

    def __repr__(self) -> str:
        leaves = optree.tree_leaves(self.tree)
        return f"Params({self.spec}, {sum(t.numel() for t in leaves)} numbers in {len(leaves)} tensors)"


optree.register_pytree_node(
    Params,
    lambda p: ((p.tree,), p.spec, ("tree",)),
    lambda spec, children: Params(spec, children[0]),
    namespace="funcvae",
)
torch_pytree.register_pytree_node(
    Params,
    lambda p: ([p.tree], p.spec),
    lambda children, spec: Params(spec, children[0]),
    flatten_with_keys_fn=lambda p: ([(torch_pytree.GetAttrKey("tree"), p.tree)], p.spec),
    serialized_type_name="funcvae.Params",
)


def init(seed: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
         **spec_fields) -> Params:
    """Fresh parameters for the VAE described by ``spec_fields`` (see ``ModelSpec``).

    Args:
      seed: names the draw; the same seed gives the same params.
      dtype, device: of every leaf.
      **spec_fields: ``ModelSpec`` fields, e.g. ``arch="conv"``, ``hidden=(512, 256)``, ``latent=32``.

    Returns:
      ``Params``; the default is the classic MLP VAE 784-400-20 with a Bernoulli decoder.
    """
    spec = ModelSpec(**spec_fields)
    gen = generator(seed, "init")
    kw = dict(dtype=dtype, device=device)
    encoder, decoder = {}, {}
    width = spec.features
    if spec.arch == "conv":
        c_in, size = spec.input_shape[0], spec.input_shape[1:]
        for i, c_out in enumerate(spec.channels):
            encoder[f"conv_{i}"] = nn.conv_init(gen, c_in, c_out, 4, **kw)
            c_in = c_out
        width = c_in * (size[0] >> len(spec.channels)) * (size[1] >> len(spec.channels))
    for i, h in enumerate(spec.hidden):
        encoder[f"hidden_{i}"] = nn.dense_init(gen, width, h, **kw)
        width = h
    encoder["mean"] = nn.dense_init(gen, width, spec.latent, **kw)
    encoder["logvar"] = nn.dense_init(gen, width, spec.latent, **kw)

    width = spec.latent
    for i, h in enumerate(reversed(spec.hidden)):
        decoder[f"hidden_{i}"] = nn.dense_init(gen, width, h, **kw)
        width = h
    if spec.arch == "conv":
        decoder["project"] = nn.dense_init(gen, width, _conv_bottleneck(spec), **kw)
        outs = list(reversed(spec.channels[:-1])) + [spec.input_shape[0]]
        c_in = spec.channels[-1]
        for i, c_out in enumerate(outs):
            decoder[f"deconv_{i}"] = nn.conv_transpose_init(gen, c_in, c_out, 4, **kw)
            c_in = c_out
    else:
        decoder["out"] = nn.dense_init(gen, width, spec.features, **kw)
    if spec.likelihood == "gaussian" and spec.obs_std is None:
        decoder["obs_logvar"] = torch.zeros(spec.features, **kw)
    return Params(spec, {"encoder": encoder, "decoder": decoder})


def _conv_bottleneck(spec: ModelSpec) -> int:
    c, h, w = spec.input_shape
    n = len(spec.channels)
    return spec.channels[-1] * (h >> n) * (w >> n)


def encode_one(spec: ModelSpec, tree: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """One flattened example (features,) -> (mean, logvar), each (latent,); logvar within ``LOGVAR_RANGE``."""
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
    return nn.dense(enc["mean"], h), torch.clamp(nn.dense(enc["logvar"], h), *LOGVAR_RANGE)


def decode_one(spec: ModelSpec, tree: dict, z: Tensor) -> Tensor:
    """One latent (latent,) -> decoder output (features,): Bernoulli logits or the Gaussian mean."""
    act = nn.ACTIVATIONS[spec.activation]
    dec = tree["decoder"]
    h = z
    for i in range(len(spec.hidden)):
        h = act(nn.dense(dec[f"hidden_{i}"], h))
    if spec.arch == "mlp":
        return nn.dense(dec["out"], h)
    n = len(spec.channels)
    h = act(nn.dense(dec["project"], h)).reshape(
        spec.channels[-1], spec.input_shape[1] >> n, spec.input_shape[2] >> n)
    for i in range(n):
        h = nn.conv_transpose(dec[f"deconv_{i}"], h, stride=2, padding=1)
        if i < n - 1:
            h = act(h)
    return h.reshape(-1)


def obs_logvar(spec: ModelSpec, tree: dict, like: Tensor) -> Tensor:
    """The Gaussian decoder's per-pixel log-variance (features,): the learned one (floored) or the fixed one
    (in ``like``'s dtype and device)."""
    if spec.obs_std is not None:
        return like.new_full((spec.features,), 2.0 * math.log(spec.obs_std))
    return torch.clamp(tree["decoder"]["obs_logvar"], min=MIN_OBS_LOGVAR)


#: Dtypes ``with_matmul_dtype`` takes besides None. Not float16: its narrow range would need loss scaling.
MATMUL_DTYPES = (torch.bfloat16,)


def with_matmul_dtype(tree: dict, dtype: torch.dtype | None) -> dict:
    """``tree`` with every layer's kernel and bias cast to ``dtype`` (None: ``tree`` itself), other leaves
    as they are. Layers compute in their kernel's dtype, so a model run on this tree does its matrix
    products in ``dtype``; called inside a differentiated function, the gradients still come back in
    the dtype of ``tree`` (mixed precision with full-precision master params)."""
    if dtype is None:
        return tree
    if tree.keys() == {"kernel", "bias"}:
        return {name: t.to(dtype) for name, t in tree.items()}
    return {name: with_matmul_dtype(t, dtype) if isinstance(t, dict) else t for name, t in tree.items()}


def check_params(params: Params) -> None:
    """Raise when ``params`` is not a well-formed ``Params`` of ONE model for its own spec (names the bad leaf)."""
    n = stack_size(params)
    if n is not None:
        raise ValueError(f"params are a stack of {n} models; take one with funcvae.unstack(params)[i]")


def stack_size(params: Params) -> int | None:
    """None for one model's params, N for a stack of N (every leaf with a leading dimension N, as
    ``funcvae.stack`` makes); raises when the tree does not match its spec either way (names the leaf)."""
    if not isinstance(params, Params):
        raise TypeError(f"expected funcvae Params (as returned by funcvae.init), got {type(params).__name__}")
    expected = dict(_leaves_by_path(init(0, device="meta", **params.spec.to_dict()).tree))
    got = dict(_leaves_by_path(params.tree))
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"params do not match their spec {params.spec}: missing {missing}, unexpected {extra}")
    first = next(iter(got))
    lead = _leading_dims(got[first], expected[first].shape, first)
    devices = set()
    for path, leaf in got.items():
        if not isinstance(leaf, Tensor):
            raise TypeError(f"param {path} must be a floating-point tensor, got a {type(leaf).__name__}")
        if not leaf.is_floating_point():
            raise TypeError(f"param {path} must be a floating-point tensor, got dtype {leaf.dtype}")
        if tuple(leaf.shape) != lead + tuple(expected[path].shape):
            raise ValueError(f"param {path} has shape {tuple(leaf.shape)}, expected {lead + tuple(expected[path].shape)}")
        if not bool(torch.isfinite(leaf).all()):
            raise ValueError(f"param {path} holds NaN or Inf values")
        devices.add(leaf.device)
    if len(devices) > 1:
        raise ValueError(f"params are spread over several devices: {sorted(map(str, devices))}")
    return lead[0] if lead else None


def _leading_dims(leaf, shape: torch.Size, path: str) -> tuple[int, ...]:
    # A stack adds exactly one leading dimension; anything else is a shape error reported by the caller.
    if isinstance(leaf, Tensor) and leaf.ndim == len(shape) + 1 and tuple(leaf.shape[1:]) == tuple(shape):
        return (leaf.shape[0],)
    return ()


def leaves_by_path(params: Params) -> dict[str, Tensor]:
    """``{"encoder/hidden_0/kernel": tensor, ...}``: leaves addressed by path, never by position."""
    return dict(_leaves_by_path(params.tree))


def _leaves_by_path(tree: dict):
    paths, leaves, _ = optree.tree_flatten_with_path(tree)
    return (("/".join(map(str, p)), leaf) for p, leaf in zip(paths, leaves))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
