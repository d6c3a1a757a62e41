"""The built-in models, made through the same public ``Model`` as any user's: an MLP, a strided conv net and a
Ladder VAE; the MLP and the conv net with a diagonal, full-covariance or IAF posterior, conditional or not.

``mlp(...)``, ``conv(...)`` and ``ladder(...)`` return a ``Model`` whose ``spec`` (a ``ModelSpec``) says how to
rebuild it, so their files load without the model being passed. The same spec always gives the same ``Model``
object (so its compiled step is reused). The families and their measured likelihoods: docs/models.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import optree
import safetensors.torch
import torch
from torch import Tensor

from funcvae import flows, ladder as ladders, likelihoods, nn, priors
from funcvae._runtime import files, records
from funcvae.contract import check_params
from funcvae.model import Model, Params, leaves_by_path

ARCHS = ("mlp", "conv", "ladder")
LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")
PRIORS = ("normal", "vamp")
POSTERIORS = ("diagonal", "full", "iaf")
#: The trained models shipped with the package, by the ``funcvae.data`` set they were trained on: their file and
#: its SHA-256. ``scripts/train_pretrained.py`` made them; their test scores are in docs/evaluation.md.
PRETRAINED = {"fashion-mnist": (Path(__file__).with_name("weights") / "fashion-mnist.safetensors",
                                "db543d0a6107fd4d1e4bb9cbaad323be905c6b1a11573685bffde88fe718ae89")}
#: How a shipped file stores params: half float32's bytes, and 11 significant bits where bfloat16 has 8; the
#: test ELBO it costs is measured in docs/evaluation.md.
STORED_DTYPE = torch.float16
_SPEC_KEY, _HISTORY_KEY = "funcvae_spec", "funcvae_history"


@dataclass(frozen=True)
class ModelSpec:
    """What a built-in VAE is.

    Attributes:
      arch: "mlp" (dense layers), "conv" (strided convolutions, then dense layers) or "ladder" (a Ladder VAE,
        ``funcvae.ladder``: one stochastic layer per ``hidden`` size, of ``latents`` sizes).
      input_shape: (channels, height, width) of one example.
      hidden: dense hidden sizes of the encoder; the decoder mirrors them. For "ladder", the deterministic width
        of each stochastic layer, bottom to top.
      latent: latent dimension (mlp, conv).
      latents: "ladder" only: each latent group's size, bottom (z1) to top, one per ``hidden`` size.
      posterior: mlp and conv: "diagonal" (a Gaussian ``encode``), "full" (a full-covariance Gaussian,
        Cholesky factor) or "iaf" (inverse autoregressive flow steps on a diagonal Gaussian, ``funcvae.flows``).
      flow_steps: "iaf" only: its number of MADE steps.
      context: mlp and conv: the size of a context vector (a conditional VAE: the encoder reads (x, c), the
        decoder (z, c)), or None.
      activation: a key of ``funcvae.nn.ACTIVATIONS``.
      channels: conv only, channels of each stride-2 convolution (each halves height and width).
      likelihood: "bernoulli" (decoder gives logits), "gaussian" (decoder gives the mean) or
        "discretized_logistic" (8-bit data: the decoder gives a mean and a log-scale of each sub-pixel).
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
    latents: tuple[int, ...] = ()
    posterior: str = "diagonal"
    flow_steps: int = 2
    context: int | None = None

    def __post_init__(self):
        for name in ("input_shape", "hidden", "channels", "latents"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        _require(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        _require(self.posterior in POSTERIORS, f"posterior must be one of {POSTERIORS}, got {self.posterior!r}")
        _require(isinstance(self.flow_steps, int) and self.flow_steps >= 1,
                 f"flow_steps must be an int >= 1, got {self.flow_steps!r}")
        _require(self.context is None or isinstance(self.context, int) and not isinstance(self.context, bool)
                 and self.context >= 1, f"context must be None or an int >= 1, got {self.context!r}")
        if self.arch == "ladder":
            _require(len(self.latents) >= 1 and len(self.latents) == len(self.hidden) and min(self.latents) >= 1,
                     f"a ladder needs one latent size >= 1 per hidden size, got hidden={self.hidden} and "
                     f"latents={self.latents}")
            _require(self.posterior == "diagonal" and self.context is None and self.likelihood == "bernoulli"
                     and self.prior == "normal", "the ladder is built with its own top-down prior, a Bernoulli "
                     "likelihood, no context and its merged Gaussian posterior (leave posterior, prior, likelihood "
                     "and context at their defaults)")
        else:
            _require(not self.latents, "latents (sizes of latent groups) is for arch='ladder'; mlp and conv take "
                     "latent")
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
    if spec.arch == "ladder":
        sizes = dict(hidden=spec.hidden, latents=spec.latents, activation=spec.activation)
        return Model(init=partial(ladders.init, features=spec.features, **sizes),
                     posterior=partial(ladders.posterior, **sizes), decode=partial(ladders.decode, **sizes),
                     prior=priors.custom(partial(ladders.log_prior, **sizes), partial(ladders.sample_prior, **sizes)),
                     likelihood=likelihoods.bernoulli(), input_shape=spec.input_shape,
                     latent=ladders.groups(spec.latents), spec=spec)
    likelihood = (likelihoods.gaussian(spec.obs_std) if spec.likelihood == "gaussian"
                  else likelihoods.get(spec.likelihood))
    prior = priors.standard_normal() if spec.prior == "normal" else priors.vamp(spec.pseudo_inputs)
    q = {"encode": partial(_encode, spec)} if spec.posterior == "diagonal" else {"posterior": partial(_posterior, spec)}
    return Model(init=partial(_init, spec), decode=partial(_decode, spec), likelihood=likelihood,
                 input_shape=spec.input_shape, latent=spec.latent, prior=prior, context=spec.context, spec=spec, **q)


def mlp(**fields) -> Model:
    """An MLP VAE: ``ModelSpec`` fields with ``arch="mlp"`` (default 784-400-20, ReLU, Bernoulli, diagonal
    Gaussian posterior); ``posterior="iaf"`` or ``"full"`` for a richer one, ``context=10`` for a conditional one."""
    return from_spec(ModelSpec(arch="mlp", **fields))


def conv(**fields) -> Model:
    """A conv VAE: ``ModelSpec`` fields with ``arch="conv"`` (4x4 stride-2 convolutions, then dense layers)."""
    return from_spec(ModelSpec(arch="conv", **fields))


def ladder(*, hidden: tuple[int, ...] = (512, 256), latents: tuple[int, ...] = (64, 32), **fields) -> Model:
    """A Ladder VAE (Sønderby et al. 2016; ``funcvae.ladder``): ``len(latents)`` stochastic layers, z1 (next to
    x) to the top, with the paper's precision-weighted merge of bottom-up and top-down terms and its
    top-down prior; Bernoulli likelihood. Train it as the paper does, with KL warm-up and free bits per group
    (``fit(..., kl_warmup=..., free_bits=...)``)."""
    return from_spec(ModelSpec(arch="ladder", hidden=hidden, latents=latents, **fields))


def _init(spec: ModelSpec, gen: torch.Generator) -> dict:
    encoder, decoder = {}, {}
    width = spec.features
    if spec.arch == "conv":
        c_in, size = spec.input_shape[0], spec.input_shape[1:]
        for i, c_out in enumerate(spec.channels):
            encoder[f"conv_{i}"] = nn.conv_init(gen, c_in, c_out, 4)
            c_in = c_out
        width = c_in * (size[0] >> len(spec.channels)) * (size[1] >> len(spec.channels))
    width += spec.context or 0  # a conditional encoder reads (features, c)
    for i, h in enumerate(spec.hidden):
        encoder[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    if spec.posterior == "diagonal":
        encoder["mean"] = nn.dense_init(gen, width, spec.latent)
        encoder["logvar"] = nn.dense_init(gen, width, spec.latent)
    elif spec.posterior == "full":
        encoder["full"] = flows.full_init(gen, width, spec.latent)
    else:
        encoder["iaf"] = flows.iaf_init(gen, width, spec.latent, spec.flow_steps, _made_hidden(spec))

    width = spec.latent + (spec.context or 0)  # a conditional decoder reads (z, c)
    for i, h in enumerate(reversed(spec.hidden)):
        decoder[f"hidden_{i}"] = nn.dense_init(gen, width, h)
        width = h
    if spec.arch == "conv":
        decoder["project"] = nn.dense_init(gen, width, _conv_bottleneck(spec))
        outs = list(reversed(spec.channels[:-1])) + [spec.input_shape[0] * _outputs(spec)]
        c_in = spec.channels[-1]
        for i, c_out in enumerate(outs):
            decoder[f"deconv_{i}"] = nn.conv_transpose_init(gen, c_in, c_out, 4)
            c_in = c_out
    else:
        decoder["out"] = nn.dense_init(gen, width, spec.features * _outputs(spec))
    if spec.likelihood == "gaussian" and spec.obs_std is None:
        decoder["obs_logvar"] = torch.zeros(spec.features)
    return {"encoder": encoder, "decoder": decoder}


def _outputs(spec: ModelSpec) -> int:
    """The decoder's numbers per feature: a mean and a log-scale for the discretised logistic, else one."""
    return 2 if spec.likelihood == "discretized_logistic" else 1


def _conv_bottleneck(spec: ModelSpec) -> int:
    n = len(spec.channels)
    return spec.channels[-1] * (spec.input_shape[1] >> n) * (spec.input_shape[2] >> n)


def _made_hidden(spec: ModelSpec) -> int:
    """The IAF's MADE width: the encoder's last hidden size (its context vector's size too)."""
    return spec.hidden[-1] if spec.hidden else max(2 * spec.latent, 16)


def _hidden(spec: ModelSpec, tree: dict, x: Tensor, c: Tensor | None) -> Tensor:
    """The encoder's last hidden vector of ONE example (and its context)."""
    act = nn.ACTIVATIONS[spec.activation]
    enc = tree["encoder"]
    h = x
    if spec.arch == "conv":
        h = h.reshape(spec.input_shape)
        for i in range(len(spec.channels)):
            h = act(nn.conv(enc[f"conv_{i}"], h, stride=2, padding=1))
        h = h.reshape(-1)
    if c is not None:
        h = torch.cat([h, c])
    for i in range(len(spec.hidden)):
        h = act(nn.dense(enc[f"hidden_{i}"], h))
    return h


def _encode(spec: ModelSpec, tree: dict, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    h = _hidden(spec, tree, x, c)
    enc = tree["encoder"]
    return nn.dense(enc["mean"], h), nn.dense(enc["logvar"], h)


def _posterior(spec: ModelSpec, tree: dict, x: Tensor, eps: Tensor, c: Tensor | None = None):
    h = _hidden(spec, tree, x, c)
    if spec.posterior == "full":
        return flows.full_sample(tree["encoder"]["full"], h, eps)
    return flows.iaf_sample(tree["encoder"]["iaf"], h, eps)


def _decode(spec: ModelSpec, tree: dict, z: Tensor, c: Tensor | None = None):
    act = nn.ACTIVATIONS[spec.activation]
    dec = tree["decoder"]
    h = z if c is None else torch.cat([z, c])
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
    if spec.likelihood == "discretized_logistic":  # means first (a conv's first C channels), then log-scales
        return out[:spec.features], out[spec.features:]
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


def pretrained(name: str) -> Params:
    """The built-in model trained on the data set ``name`` (a key of ``PRETRAINED``) that ships with the package;
    "fashion-mnist" is the default model (``init(seed=0)``: MLP 784-400-20, Bernoulli decoder) trained by ``fit``.

    Returns:
      float32 ``Params``, new tensors at each call (the file stores them in ``STORED_DTYPE``).

    Raises:
      ValueError: an unknown name (the message lists the known ones), or a file that fails its SHA-256 (the
        message names the file).
    """
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained model {name!r}; the package ships {sorted(PRETRAINED)}")
    return load_pretrained(*PRETRAINED[name])[0]


def save_pretrained(path: str | os.PathLike, params: Params, history: list[dict]) -> str:
    """Write a built-in model's ``params`` in ``STORED_DTYPE`` with ``history`` (``fit``'s records of their
    training, less their ``seconds``: a remake of the same run then writes the same bytes) as ``load_pretrained``
    reads them, atomically; returns the SHA-256 of the file's bytes (hex).

    Raises:
      ValueError: a model of the user's own (no spec to rebuild it from), or a param too large for the dtype.
    """
    check_params(params)
    if params.model.spec is None:
        raise ValueError("only a built-in model's params can be saved this way: its spec rebuilds the model")
    stored = {k: t.to(STORED_DTYPE) for k, t in leaves_by_path(params).items()}
    overflow = next((k for k, t in stored.items() if not torch.isfinite(t).all()), None)
    if overflow is not None:
        raise ValueError(f"param {overflow} has values that {STORED_DTYPE} cannot hold")
    path = Path(path)
    files.write(path, stored, {_SPEC_KEY: json.dumps(params.model.spec.to_dict()),
                               _HISTORY_KEY: records.dumps([{k: v for k, v in r.items() if k != "seconds"}
                                                            for r in history])})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_pretrained(path: str | os.PathLike, sha256: str) -> tuple[Params, list[dict]]:
    """The params (float32) and training history in a file written by ``save_pretrained``, read once its bytes
    match ``sha256`` (hex).

    Raises:
      ValueError: the file fails its SHA-256, or was not written by ``save_pretrained``, or holds other tensors
        than its model's (each message names the file); FileNotFoundError.
    """
    path = Path(path)
    raw = path.read_bytes()  # hashed and parsed from one read: a file replaced meanwhile cannot slip through
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"{path} fails its SHA-256: the file is damaged or not the one this funcvae expects")
    meta = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")]).get("__metadata__") or {}  # safetensors' header
    if not {_SPEC_KEY, _HISTORY_KEY} <= meta.keys():
        raise ValueError(f"{path} was not written by funcvae.models.save_pretrained (no model spec or history)")
    try:
        model = from_spec(ModelSpec.from_dict(json.loads(meta[_SPEC_KEY])))
    except (TypeError, ValueError) as e:  # a field this funcvae does not know, or a value it refuses
        raise ValueError(f"{path}: its model spec does not describe a funcvae model ({e})") from e
    stored, template = safetensors.torch.load(raw), model.init(0)  # the template: the leaves' paths, shapes, order
    want = {k: (t.shape, STORED_DTYPE) for k, t in leaves_by_path(template).items()}
    if {k: (t.shape, t.dtype) for k, t in stored.items()} != want:
        raise ValueError(f"{path} holds other tensors than the {STORED_DTYPE} params of {model}")
    tree = optree.tree_map_with_path(lambda p, _: stored["/".join(p)].float(), template.tree, namespace="funcvae")
    return Params(model, tree), records.loads(meta[_HISTORY_KEY])
