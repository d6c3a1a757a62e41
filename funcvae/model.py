"""A VAE is a ``Model`` (pure functions for ONE example, plus static facts) and ``Params`` (the model with its
tree of tensors).

The user writes pure functions and names the rest (the contract in full: docs/models.md)::

    model = funcvae.Model(init=init, posterior=posterior, decode=decode, latent={"z1": 32, "z2": 16},
                          prior=funcvae.priors.custom(log_prob=log_prior, sample=sample_prior),
                          likelihood="bernoulli", input_shape=(1, 28, 28))
    params = model.init(seed=0)

- ``init(generator) -> tree``: any nested dict of floating-point tensors, drawn from the generator.
- ``posterior(tree, x, eps) -> (z, log_q)``: ONE reparameterised draw of q(z | x) for one flattened example
  x (features,) from standard normal noise eps shaped like ``latent``, and log q(z | x) in nats (0-d, or a
  dict per latent group); or, the diagonal Gaussian case, ``encode(tree, x) -> (mean, logvar)``.
- ``decode(tree, z) -> out``: one latent to the likelihood's parameters (see ``funcvae.likelihoods``).
- A conditional model (``context=K``) takes its context c (K,) last in every function.

Batches, samples and stacks of models come from ``torch.func.vmap`` of these. ``Params`` is registered with
optree (namespace ``"funcvae"``) and torch's pytree, so transforms see only the tensors and carry the model
through as static metadata: ``fit``, ``elbo``, ``iwae``, the diagnostics and checkpoints need nothing else.
A prior with parameters (the VampPrior) keeps them in the tree under ``"prior"``. ``funcvae.contract`` checks
a model and its params against this before any work.
"""

from __future__ import annotations

from typing import Callable

import optree
import torch
import torch.utils._pytree as torch_pytree
from torch import Tensor

from funcvae import distributions as D, likelihoods, priors
from funcvae.rng import generator

# The posterior's log-variance is kept where exp() of it (and of half of it) is finite and far from float32's
# limits: variances from 2e-13 to 5e8 cover every useful posterior, and a wild encoder output early in
# training can no longer overflow the KL or the sample.
LOGVAR_RANGE = (-30.0, 20.0)
#: The top-level key of the tree that holds a prior's own parameters.
PRIOR_KEY = "prior"


class Model:
    """A VAE as pure functions of ONE example and static facts; frozen and hashable (compiled steps are cached
    per model, so a model made once is compiled once). The contract in full: docs/models.md.

    Args:
      init: ``init(generator) -> tree``, nested dicts of floating-point tensors.
      posterior: ``posterior(tree, x, eps) -> (z, log_q)``: ONE reparameterised draw of q(z | x) from standard
        normal noise ``eps`` (shaped as ``latent`` says) and log q(z | x) in nats, a 0-d tensor or a dict of
        0-d tensors keyed like ``latent`` (one per group).
      encode: instead of ``posterior``, the diagonal Gaussian case: ``encode(tree, x) -> (mean, logvar)``, each
        (latent,); the KL is then analytic where the prior has one. Give exactly one of the two.
      decode: ``decode(tree, z) -> out``, ``out`` the likelihood's parameters.
      likelihood: "bernoulli", "gaussian" (decode returns ``(mean, logvar)``), "discretized_logistic" (decode
        returns ``(mean, log_scale)``) or an object from ``funcvae.likelihoods`` (e.g. ``gaussian(std=0.1)``).
      input_shape: (channels, height, width) of one example; ``features`` is their product; x is (features,).
      latent: the noise one draw takes: an int, or a dict of ints (latent groups, such as the layers of a
        hierarchy); ``z`` and ``eps`` have its structure (a (latent,) tensor, or a dict of (size,) tensors).
      prior: "normal" (default), "vamp" or an object from ``funcvae.priors`` (``priors.custom(log_prob,
        sample)`` for a prior of the model's own, such as a hierarchy's top-down one).
      context: the size K of a context vector (a conditional VAE), or None. Every function then takes it
        LAST: ``encode(tree, x, c)``, ``posterior(tree, x, eps, c)``, ``decode(tree, z, c)``, and a custom
        prior's ``log_prob(tree, z, c)`` and ``sample(tree, eps, c)``; c is (K,) in the params' dtype.
      spec: set by the built-in models (``funcvae.models``): the description they rebuild themselves from
        when a file is loaded. A model without one needs ``load_params(path, model=...)``.
    """

    __slots__ = ("init_fn", "encode", "posterior", "decode", "likelihood", "input_shape", "layout", "prior",
                 "context", "spec")

    def __init__(self, *, init: Callable, decode: Callable, encode: Callable | None = None,
                 posterior: Callable | None = None, likelihood="bernoulli", input_shape=(1, 28, 28), latent,
                 prior="normal", context: int | None = None, spec=None):
        if (encode is None) == (posterior is None):
            raise TypeError("a Model takes exactly one of encode= (a diagonal Gaussian posterior, (mean, logvar)) "
                            "and posterior= (a draw z and its log q(z | x)); got "
                            + ("both" if encode is not None else "neither"))
        q = ("encode", encode) if encode is not None else ("posterior", posterior)
        for name, fn in (("init", init), q, ("decode", decode)):
            if not callable(fn):
                raise TypeError(f"Model's {name} must be a function, got {type(fn).__name__}")
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3 or not all(_is_count(v) for v in shape):
            raise ValueError(f"input_shape must be (channels, height, width) of ints >= 1, got {input_shape!r}")
        layout = _layout(latent)
        if encode is not None and not isinstance(layout, int):
            raise ValueError("encode= gives one (mean, logvar) pair, so its latent is an int; latent groups (a dict) "
                             "need posterior=")
        if context is not None and not _is_count(context):
            raise ValueError(f"context must be None or the size of the context vector, an int >= 1, got {context!r}")
        prior = priors.get(prior)
        priors.check(prior, layout, gaussian=encode is not None, context=context)
        values = dict(init_fn=init, encode=encode, posterior=posterior, decode=decode,
                      likelihood=likelihoods.get(likelihood), input_shape=tuple(int(v) for v in shape), layout=layout,
                      prior=prior, context=context, spec=spec)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("a Model is frozen; make a new one")

    def _key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other) -> bool:
        return isinstance(other, Model) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self.spec is not None:
            return f"Model({self.spec})"
        q = f"encode={_name(self.encode)}" if self.gaussian else f"posterior={_name(self.posterior)}"
        c = f", context={self.context}" if self.context is not None else ""
        return (f"Model({q}, decode={_name(self.decode)}, likelihood={self.likelihood}, prior={self.prior}, "
                f"input_shape={self.input_shape}, latent={self.latent}{c})")

    def replace(self, **changes) -> "Model":
        """A new model with ``changes`` (e.g. ``prior=funcvae.priors.vamp(500)``); a built-in model's
        ``spec`` no longer describes the result, so it is dropped."""
        fields = {"init": self.init_fn, "encode": self.encode, "posterior": self.posterior, "decode": self.decode,
                  "likelihood": self.likelihood, "input_shape": self.input_shape, "latent": self.latent,
                  "prior": self.prior, "context": self.context}
        unknown = set(changes) - fields.keys()
        if unknown:
            raise TypeError(f"Model has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        if "posterior" in changes and "encode" not in changes:
            fields["encode"] = None
        if "encode" in changes and "posterior" not in changes:
            fields["posterior"] = None
        return Model(**{**fields, **changes})

    @property
    def gaussian(self) -> bool:
        """Whether the posterior is given by ``encode`` (a diagonal Gaussian with a known mean and variance)."""
        return self.encode is not None

    @property
    def latent(self) -> int | dict[str, int]:
        """The noise of one draw: an int, or a dict of group sizes (a fresh copy)."""
        return self.layout if isinstance(self.layout, int) else dict(self.layout)

    @property
    def groups(self) -> tuple[str, ...] | None:
        """The latent groups' names in order, or None for one group (an int ``latent``)."""
        return None if isinstance(self.layout, int) else tuple(name for name, _ in self.layout)

    @property
    def noise_size(self) -> int:
        """Numbers in one draw's noise: ``latent``, or the sum of its groups' sizes. Tools draw eps flat,
        (..., noise_size), and ``split`` gives it the model's structure."""
        return self.layout if isinstance(self.layout, int) else sum(n for _, n in self.layout)

    @property
    def features(self) -> int:
        """Numbers in one flattened example (784 for 1x28x28)."""
        c, h, w = self.input_shape
        return c * h * w

    def split(self, flat: Tensor):
        """Flat noise or latents (..., noise_size) in the structure of ``latent``: itself, or a dict of
        (..., size) slices in the groups' order."""
        if isinstance(self.layout, int):
            return flat
        return dict(zip(self.groups, flat.split([n for _, n in self.layout], dim=-1)))

    def join(self, z) -> Tensor:
        """``split``'s inverse: latents in the model's structure as one (..., noise_size) tensor."""
        return z if isinstance(self.layout, int) else torch.cat([z[name] for name in self.groups], dim=-1)

    def init(self, seed: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
             ) -> "Params":
        """Fresh ``Params``: the user's ``init`` with a generator for ``seed`` (the same seed, the same params),
        then the prior's own parameters from a stream of their own, every leaf cast to ``dtype`` on ``device``."""
        tree = self.init_fn(generator(seed, "init"))
        _check_tree(tree, "init(generator)")
        prior_tree = self.prior.init(generator(seed, "init", PRIOR_KEY), self)
        if prior_tree is not None:
            if PRIOR_KEY in tree:
                raise ValueError(f"the model's init returned a top-level {PRIOR_KEY!r} entry, which the {self.prior} "
                                 "keeps its own parameters in; rename it")
            tree = {**tree, PRIOR_KEY: prior_tree}
        tree = optree.tree_map(lambda t: t.to(dtype=dtype, device=device), tree)
        return Params(self, tree)

    def _with(self, c) -> tuple:
        return () if self.context is None else (c,)

    def encode_one(self, tree: dict, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The user's ``encode`` (a Gaussian model's) with its log-variance kept within ``LOGVAR_RANGE``."""
        mean, logvar = self.encode(tree, x, *self._with(c))
        return mean, torch.clamp(logvar, *LOGVAR_RANGE)

    def draw(self, tree: dict, x: Tensor, eps: Tensor, c: Tensor | None = None):
        """ONE draw of q(z | x) from flat noise eps (noise_size,): ``(z, log_q)``, z in the model's structure,
        log_q nats (0-d, or a dict per group)."""
        if self.gaussian:
            mean, logvar = self.encode_one(tree, x, c)
            z = D.reparameterize(mean, logvar, eps)
            return z, D.gaussian_log_prob(mean, logvar, z).sum(-1)
        return self.posterior(tree, x, self.split(eps), *self._with(c))

    def log_prior(self, tree: dict, z, c: Tensor | None = None):
        """log p(z) in nats for ONE z in the model's structure: 0-d, or a dict per group."""
        return self.prior.log_prob(tree, self, z, c)

    def decode_one(self, tree: dict, z, c: Tensor | None = None):
        return self.decode(tree, z, *self._with(c))


def _layout(latent) -> int | tuple[tuple[str, int], ...]:
    """``latent`` as the model keeps it (hashable): an int, or (name, size) pairs in the dict's order."""
    if _is_count(latent):
        return int(latent)
    if isinstance(latent, dict) and latent:
        for name, size in latent.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"latent's group names must be non-empty strings without '/', got {name!r}")
            if not _is_count(size):
                raise ValueError(f"latent group {name!r} must have a size that is an int >= 1, got {size!r}")
        return tuple((name, int(size)) for name, size in latent.items())
    raise ValueError(f"latent must be an int >= 1 or a non-empty dict of them (latent groups), got {latent!r}")


class Params:
    """A VAE's parameters: ``model`` (static) and ``tree`` (nested dicts of tensors, leaves addressed by path
    such as ``encoder/hidden_0/kernel``)."""

    __slots__ = ("model", "tree")

    def __init__(self, model: Model, tree: dict):
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "tree", tree)

    def __setattr__(self, name, value):
        raise AttributeError("Params are frozen; make new ones")

    def __repr__(self) -> str:
        leaves = optree.tree_leaves(self.tree)
        return f"Params({self.model}, {sum(t.numel() for t in leaves)} numbers in {len(leaves)} tensors)"


optree.register_pytree_node(
    Params,
    lambda p: ((p.tree,), p.model, ("tree",)),
    lambda model, children: Params(model, children[0]),
    namespace="funcvae",
)
torch_pytree.register_pytree_node(
    Params,
    lambda p: ([p.tree], p.model),
    lambda children, model: Params(model, children[0]),
    flatten_with_keys_fn=lambda p: ([(torch_pytree.GetAttrKey("tree"), p.tree)], p.model),
    serialized_type_name="funcvae.Params",
)


#: Dtypes ``with_matmul_dtype`` takes besides None. Not float16: its narrow range would need loss scaling.
MATMUL_DTYPES = (torch.bfloat16,)
#: Dtypes params may have: training updates are far smaller than a half-precision param's spacing, so
#: float16 or bfloat16 params would stop learning (mixed precision keeps float32 params, ``MATMUL_DTYPES``).
PARAM_DTYPES = (torch.float32, torch.float64)


def with_matmul_dtype(tree: dict, dtype: torch.dtype | None) -> dict:
    """``tree`` with every layer's kernel and bias (a dict of exactly ``kernel`` and ``bias``, as the
    ``funcvae.nn`` layers make) cast to ``dtype`` (None: ``tree`` itself), other leaves as they are. Layers
    compute in their kernel's dtype, so a model run on this tree does its matrix products in ``dtype``;
    called inside a differentiated function, the gradients still come back in the dtype of ``tree`` (mixed
    precision with full-precision master params)."""
    if dtype is None:
        return tree
    if tree.keys() == {"kernel", "bias"}:
        return {name: t.to(dtype) for name, t in tree.items()}
    return {name: with_matmul_dtype(t, dtype) if isinstance(t, dict) else t for name, t in tree.items()}


def some_leaf(params: Params) -> Tensor:
    """A leaf whose dtype and device stand for all of them (``check_params`` checked they agree)."""
    return optree.tree_leaves(params.tree)[0]


def leaves_by_path(params: Params) -> dict[str, Tensor]:
    """``{"encoder/hidden_0/kernel": tensor, ...}``: leaves addressed by path, never by position."""
    return dict(paths_and_leaves(params.tree))


def paths_and_leaves(tree, prefix: tuple = ()):
    """``(path, leaf)`` pairs of a pytree of dicts, named tuples, tuples and ``Params``, paths joined by "/"
    (a named tuple's entries by field name: ``1/mu/encoder/mean/kernel``), in optree's leaf order."""
    if isinstance(tree, Params):
        yield from paths_and_leaves(tree.tree, prefix)
    elif isinstance(tree, dict):
        for key in sorted(tree):  # optree's order for dicts
            yield from paths_and_leaves(tree[key], (*prefix, key))
    elif isinstance(tree, tuple) and hasattr(tree, "_fields"):
        for name, value in zip(tree._fields, tree):
            yield from paths_and_leaves(value, (*prefix, name))
    elif isinstance(tree, (tuple, list)):
        for i, value in enumerate(tree):
            yield from paths_and_leaves(value, (*prefix, i))
    elif tree is not None:
        yield "/".join(map(str, prefix)), tree


def _check_tree(tree, where: str) -> None:
    if not isinstance(tree, dict) or not tree:
        raise TypeError(f"the model's {where} must return a non-empty dict of tensors, got {describe_value(tree)}")
    check_keys(tree, f"the model's {where}")
    paths, leaves, _ = optree.tree_flatten_with_path(tree, none_is_leaf=True)  # a None is a bad leaf, not a node
    for path, leaf in zip(("/".join(map(str, p)) for p in paths), leaves):
        if not (isinstance(leaf, Tensor) and leaf.is_floating_point()):
            raise TypeError(f"the model's {where} returned {describe_value(leaf)} at {path}; every leaf must be a "
                            "floating-point tensor (keep settings in the Model, not in the tree)")
        if leaf.is_meta:
            raise ValueError(f"the model's {where} returned a tensor on the meta device at {path}; it must hold "
                             "values (draw them from the generator it is given)")


def check_keys(tree: dict, where: str, prefix: str = "") -> None:
    """Raise TypeError naming the first key of ``tree`` (nested dicts) that is not a non-empty string without
    "/": leaves are addressed, saved and loaded by their path ``a/b/c``."""
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key:
            at = f" under {prefix.rstrip('/')}" if prefix else ""
            raise TypeError(f"{where} has the key {key!r}{at}: keys must be non-empty strings without '/' (leaves "
                            "are addressed, saved and loaded by their path, a/b/c)")
        if isinstance(value, dict):
            check_keys(value, where, f"{prefix}{key}/")


def describe_value(value) -> str:
    """A value as an error message names it: a tensor's shape and dtype, a sequence's items, else its type."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: " + ", ".join(describe_value(v) for v in value)
    return f"a {type(value).__name__}"


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
