"""A VAE is a ``Model`` (pure functions for ONE example, plus static facts) and ``Params`` (the model with its
tree of tensors).

The user writes three pure functions and names the rest::

    model = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli",
                          input_shape=(1, 28, 28), latent=32)
    params = model.init(seed=0)

- ``init(generator) -> tree``: any nested dict of floating-point tensors, drawn from the generator.
- ``encode(tree, x) -> (mean, logvar)``: one flattened example (features,) to the diagonal Gaussian
  posterior q(z | x), each (latent,).
- ``decode(tree, z) -> out``: one latent (latent,) to the likelihood's parameters (see
  ``funcvae.likelihoods``).

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

from funcvae import likelihoods, priors
from funcvae.rng import generator

# The posterior's log-variance is kept where exp() of it (and of half of it) is finite and far from float32's
# limits: variances from 2e-13 to 5e8 cover every useful posterior, and a wild encoder output early in
# training can no longer overflow the KL or the sample.
LOGVAR_RANGE = (-30.0, 20.0)
#: The top-level key of the tree that holds a prior's own parameters.
PRIOR_KEY = "prior"


class Model:
    """A VAE as pure functions of ONE example and static facts; frozen and hashable (compiled steps are cached
    per model, so a model made once is compiled once).

    Args:
      init: ``init(generator) -> tree``, nested dicts of floating-point tensors.
      encode: ``encode(tree, x) -> (mean, logvar)``, x (features,) flattened, each output (latent,).
      decode: ``decode(tree, z) -> out``, z (latent,), ``out`` the likelihood's parameters.
      likelihood: "bernoulli", "gaussian" (decode returns ``(mean, logvar)``) or an object from
        ``funcvae.likelihoods`` (e.g. ``gaussian(std=0.1)``).
      input_shape: (channels, height, width) of one example; ``features`` is their product.
      latent: the latent dimension.
      prior: "normal" (default), "vamp" or an object from ``funcvae.priors``.
      spec: set by the built-in models (``funcvae.models``): the description they rebuild themselves from
        when a file is loaded. A model without one needs ``load_params(path, model=...)``.
    """

    __slots__ = ("init_fn", "encode", "decode", "likelihood", "input_shape", "latent", "prior", "spec")

    def __init__(self, *, init: Callable, encode: Callable, decode: Callable, likelihood="bernoulli",
                 input_shape=(1, 28, 28), latent: int, prior="normal", spec=None):
        for name, fn in (("init", init), ("encode", encode), ("decode", decode)):
            if not callable(fn):
                raise TypeError(f"Model's {name} must be a function, got {type(fn).__name__}")
        shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
        if shape is None or len(shape) != 3 or not all(_is_count(v) for v in shape):
            raise ValueError(f"input_shape must be (channels, height, width) of ints >= 1, got {input_shape!r}")
        if not _is_count(latent):
            raise ValueError(f"latent must be an int >= 1, got {latent!r}")
        values = dict(init_fn=init, encode=encode, decode=decode, likelihood=likelihoods.get(likelihood),
                      input_shape=tuple(int(v) for v in shape), latent=int(latent), prior=priors.get(prior),
                      spec=spec)
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
        return (f"Model(encode={_name(self.encode)}, decode={_name(self.decode)}, likelihood={self.likelihood}, "
                f"prior={self.prior}, input_shape={self.input_shape}, latent={self.latent})")

    def replace(self, **changes) -> "Model":
        """A new model with ``changes`` (e.g. ``prior=funcvae.priors.vamp(500)``); a built-in model's
        ``spec`` no longer describes the result, so it is dropped."""
        fields = {"init": self.init_fn, "encode": self.encode, "decode": self.decode, "likelihood": self.likelihood,
                  "input_shape": self.input_shape, "latent": self.latent, "prior": self.prior}
        unknown = set(changes) - fields.keys()
        if unknown:
            raise TypeError(f"Model has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        return Model(**{**fields, **changes})

    @property
    def features(self) -> int:
        """Numbers in one flattened example (784 for 1x28x28)."""
        c, h, w = self.input_shape
        return c * h * w

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

    def encode_one(self, tree: dict, x: Tensor) -> tuple[Tensor, Tensor]:
        """The user's ``encode`` with its log-variance kept within ``LOGVAR_RANGE``."""
        mean, logvar = self.encode(tree, x)
        return mean, torch.clamp(logvar, *LOGVAR_RANGE)

    def decode_one(self, tree: dict, z: Tensor):
        return self.decode(tree, z)


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
