"""The model contract, checked before any work: a ``Model``'s functions run once as every step runs them
(``structure``), and ``Params`` are a well-formed tree of one model or a stack (``check_params``,
``stack_size``); ``examples_of`` opens every public function that takes params and data. What is checked and
when: docs/training.md, "Bad input"."""

from __future__ import annotations

import collections
import functools
from typing import Callable, NamedTuple

import optree
import torch
from torch import Tensor

from funcvae import distributions as D
from funcvae.inputs import as_examples
from funcvae.model import (LOGVAR_RANGE, PARAM_DTYPES, Model, Params, check_keys, describe_value, leaves_by_path,
                           some_leaf)


class Structure(NamedTuple):
    """What the model check found: ``leaves`` ``{path: (shape, dtype)}`` of a freshly initialised tree, and
    ``per_group``: whether its posterior and prior both give log-densities per latent group (so its KL is
    known per group)."""

    leaves: dict[str, tuple[tuple[int, ...], torch.dtype]]
    per_group: bool


@functools.lru_cache(maxsize=None)
def structure(model: Model) -> Structure:
    """The model's ``Structure``, once the model has shown that it keeps the contract, before any work:
    ``init`` gives the same tree twice for one seed; the posterior (``encode`` or ``posterior``), the prior and
    ``decode`` return the structures and shapes the latent, the likelihood and the context say, in the params'
    floating dtype, for one example; and they run as every step runs them (under ``torch.func.vmap``, on two
    examples) to the same values twice, drawing no random numbers and writing to none of their inputs. Raises
    ValueError (TypeError for a wrong dtype) naming the broken rule; cached per model (one check per model and
    process)."""
    params = model.init(0)
    leaves = leaves_by_path(params)
    again = leaves_by_path(model.init(0))
    if again.keys() != leaves.keys() or not all(torch.equal(again[p], t) for p, t in leaves.items()):
        raise ValueError("the model's init gave other params for the same seed: it must draw every random number "
                         "from the generator it is given (torch.randn(..., generator=gen)), not torch's global one")
    dtype = some_leaf(params).dtype
    c = None if model.context is None else torch.zeros(model.context, dtype=dtype)
    with torch.no_grad():
        x, eps = torch.zeros(model.features, dtype=dtype), torch.zeros(model.noise_size, dtype=dtype)
        if model.gaussian:  # its draw is made from the checked encoding, without running encode again
            mean, logvar = _check_encoded(model, model.encode(params.tree, x, *model._with(c)), dtype)
            z, log_q = mean, D.gaussian_log_prob(mean, logvar.clamp(*LOGVAR_RANGE), mean).sum(-1)
        else:
            z, log_q = _check_drawn(model, params.tree, x, eps, c, dtype)
        log_p = _check_density(model, ("prior", "log_prob"), model.log_prior(params.tree, z, c), dtype)
        if model.prior.name == "custom":
            _check_latent(model, ("prior", "sample"), model.prior.sample_fn(params.tree, model.split(eps),
                                                                             *model._with(c)), dtype)
        _check_decoded(model, _decode(model, params.tree, z, c), dtype)
        _check_batched(model, params.tree, leaves, dtype)
    per_group = isinstance(log_q, dict) and isinstance(log_p, dict)
    return Structure({path: (tuple(t.shape), t.dtype) for path, t in leaves.items()}, per_group)


def _check_encoded(model: Model, out, dtype: torch.dtype) -> None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise ValueError(f"the model's encode must return (mean, logvar), got {describe_value(out)}")
    for name, t in zip(("mean", "logvar"), out):
        if tuple(t.shape) != (model.latent,):
            raise ValueError(f"the model's encode returned a {name} of shape {tuple(t.shape)} for one example "
                             f"of shape ({model.features},); expected ({model.latent},) (latent={model.latent})")
        _check_float("encode", name, t, dtype)
    return out


def _check_drawn(model: Model, tree: dict, x: Tensor, eps: Tensor, c, dtype: torch.dtype):
    """The posterior's draw (z, log_q) for one example, checked against ``latent``."""
    out = model.posterior(tree, x, model.split(eps), *model._with(c))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"the model's posterior must return (z, log_q), got {describe_value(out)}")
    z, log_q = out
    _check_latent(model, ("posterior", "z"), z, dtype)
    _check_density(model, ("posterior", "log_q"), log_q, dtype)
    return z, log_q


def _check_latent(model: Model, what: tuple[str, str], z, dtype: torch.dtype) -> None:
    """``z`` (``what``: the function and the output's name) has the structure of ``latent``: a (latent,)
    tensor, or a dict of (size,) tensors with its keys."""
    if model.groups is None:
        ok = isinstance(z, Tensor) and tuple(z.shape) == (model.latent,)
        want = f"a tensor of shape ({model.latent},) (latent={model.latent})"
    else:
        ok = isinstance(z, dict) and list(z) == list(model.groups) and all(
            isinstance(z[g], Tensor) and tuple(z[g].shape) == (n,) for g, n in model.latent.items())
        want = f"a dict of 1-d tensors {model.latent} (latent's groups, in its order)"
    if not ok:
        got = f"a dict with keys {list(z)}: " + ", ".join(describe_value(v) for v in z.values()) if isinstance(
            z, dict) else describe_value(z)
        raise ValueError(f"the model's {what[0]}'s {what[1]} for one example must be {want}, got {got}")
    for t in (z.values() if isinstance(z, dict) else (z,)):
        _check_float(*what, t, dtype)


def _check_density(model: Model, what: tuple[str, str], value, dtype: torch.dtype):
    """A log-density for one example (``what``: the function and the output's name): a 0-d tensor, or a dict
    of them keyed like the latent's groups."""
    if isinstance(value, dict):
        ok = model.groups is not None and set(value) == set(model.groups) and all(
            isinstance(v, Tensor) and v.ndim == 0 for v in value.values())
    else:
        ok = isinstance(value, Tensor) and value.ndim == 0
    if not ok:
        groups = "" if model.groups is None else f", or a dict of 0-d tensors keyed {list(model.groups)}"
        got = f"a dict with keys {list(value)}" if isinstance(value, dict) else describe_value(value)
        raise ValueError(f"the model's {what[0]}'s {what[1]} for one example must be a 0-d tensor (nats){groups}, "
                         f"got {got}")
    for v in (value.values() if isinstance(value, dict) else (value,)):
        _check_float(*what, v, dtype)
    return value


def _draw(model: Model, tree: dict, x: Tensor, eps: Tensor, c):
    """The user's posterior (or encode, and its Gaussian's draw) called as it is, for the check."""
    if not model.gaussian:
        return model.posterior(tree, x, model.split(eps), *model._with(c))
    mean, logvar = model.encode(tree, x, *model._with(c))
    return D.reparameterize(mean, logvar.clamp(*LOGVAR_RANGE), eps)


def _decode(model: Model, tree: dict, z, c):
    return model.decode(tree, z, *model._with(c))


def _check_float(fn: str, name: str, t: Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"the model's {fn} returned a {name} of dtype {t.dtype} for params of dtype {dtype}; it must "
                        "return floating-point tensors in the params' dtype")


def _check_decoded(model: Model, out, dtype: torch.dtype) -> None:
    want = (model.features,)
    names = model.likelihood.outputs
    paired = len(names) > 1
    parts = (out,) if not paired else out if isinstance(out, (tuple, list)) and len(out) == len(names) else None
    if parts is None or not all(isinstance(t, Tensor) and tuple(t.shape) == want for t in parts):
        expected = f"({', '.join(names)}), each of shape {want}" if paired else f"one tensor of shape {want}"
        raise ValueError(f"the model's decode must return {expected} for the {model.likelihood} likelihood, got "
                         f"{describe_value(out)}")
    for t in parts:
        _check_float("decode", "tensor", t, dtype)


def _check_batched(model: Model, tree: dict, leaves: dict[str, Tensor], dtype: torch.dtype) -> None:
    """The posterior, the prior and ``decode`` on two examples under vmap, as a step runs them: no writes to
    the params (``leaves``: ``tree``'s by path) or the data, no random draws, twice the same values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, model.features, generator=gen).to(dtype)
    eps = torch.randn(2, model.noise_size, generator=gen).to(dtype)
    c = None if model.context is None else torch.rand(2, model.context, generator=gen).to(dtype)
    kept = {path: t.clone() for path, t in leaves.items()}
    z = model.split(eps)
    name = "encode" if model.gaussian else "posterior"
    checks = [(name, (lambda t, a, e, ci: _draw(model, t, a, e, ci)), (x, eps)),
              ("decode", (lambda t, zi, ci: _decode(model, t, zi, ci)), (z,)),
              ("prior's log_prob", (lambda t, zi, ci: model.log_prior(t, zi, ci)), (z,))]
    for name, fn, data in checks:
        before = [d.clone() for d in optree.tree_leaves(data)]
        outs = [_under_vmap(name, fn, tree, data, c)]
        path = next((p for p, t in leaves.items() if not torch.equal(t, kept[p])), None)
        if path is not None:
            raise ValueError(f"the model's {name} wrote to param {path} in place; the functions must not change "
                             "their inputs (compute a new tensor instead)")
        if not all(torch.equal(a, b) for a, b in zip(before, optree.tree_leaves(data))):
            raise ValueError(f"the model's {name} wrote to its input in place (x.clamp_(...), say), which would "
                             "change the caller's data; the functions must compute new tensors instead")
        outs.append(_under_vmap(name, fn, tree, data, c))
        if not all(torch.equal(a, b) for a, b in zip(*map(optree.tree_leaves, outs))):
            raise ValueError(f"the model's {name} gave other values for the same input: it must be a pure "
                             "function of the params and its input (the noise comes in as eps)")


#: What torch.func.vmap's errors say when a function breaks a rule of the contract, and the rule.
_RULES = (("data-dependent control flow", "it branches on a tensor's value (if x.sum() > 0, .item(), ...); under "
           "vmap and torch.compile a value is not known in Python: use torch.where"),
          ("random operation", "it draws random numbers (torch.randn, dropout, ...); the functions must be "
           "deterministic: the noise comes in as eps, drawn by funcvae"),
          ("inplace", "it writes in place to a tensor it was given; compute a new tensor instead"))


def _under_vmap(name: str, fn: Callable, tree: dict, data: tuple, c):
    try:
        in_dims = (None, *[0] * len(data), None if c is None else 0)
        return torch.func.vmap(fn, in_dims=in_dims, randomness="error")(tree, *data, c)
    except RuntimeError as e:
        rule = next((rule for key, rule in _RULES if key in str(e)), None)
        if rule is None:
            raise ValueError(f"the model's {name} failed on two examples under torch.func.vmap, as every step runs "
                             f"it: {e}") from e
        raise ValueError(f"the model's {name} breaks the contract: {rule}") from e


def check_params(params: Params) -> None:
    """Raise when ``params`` is not a well-formed ``Params`` of ONE model (names the bad leaf)."""
    n = stack_size(params)
    if n is not None:
        raise ValueError(f"params are a stack of {n} models; take one with funcvae.unstack(params)[i]")


def stack_size(params: Params) -> int | None:
    """None for one model's params, N for a stack of N (every leaf with a leading dimension N, as
    ``funcvae.stack(...)`` makes); raises when the tree does not match its model either way (names the leaf)."""
    if not isinstance(params, Params):
        raise TypeError(f"expected funcvae Params (as returned by model.init or funcvae.init), got "
                        f"{type(params).__name__}")
    expected = structure(params.model).leaves
    if isinstance(params.tree, dict):
        check_keys(params.tree, "the params tree")
    got = leaves_by_path(params)
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"params do not match their model {params.model}: missing {missing}, unexpected {extra}")
    first = next(iter(got))
    lead = _leading_dims(got[first], expected[first][0])
    for path, leaf in got.items():
        _check_leaf(path, leaf, lead + expected[path][0])
    _check_dtype(got)
    devices = {leaf.device for leaf in got.values()}
    if len(devices) > 1:
        raise ValueError(f"params are spread over several devices: {sorted(map(str, devices))}")
    return lead[0] if lead else None


def _check_leaf(path: str, leaf, shape: tuple[int, ...]) -> None:
    """Raise unless ``leaf`` is a dense floating-point tensor of ``shape`` holding finite values."""
    if not isinstance(leaf, Tensor):
        raise TypeError(f"param {path} must be a floating-point tensor, got a {type(leaf).__name__}")
    if not leaf.is_floating_point():
        raise TypeError(f"param {path} must be a floating-point tensor, got dtype {leaf.dtype}")
    if leaf.layout != torch.strided:
        raise TypeError(f"param {path} is a {leaf.layout} tensor; params must be dense (t.to_dense())")
    if leaf.is_meta:
        raise ValueError(f"param {path} is on the meta device (no values); make the params with model.init or "
                         "funcvae.load_params")
    if tuple(leaf.shape) != shape:
        raise ValueError(f"param {path} has shape {tuple(leaf.shape)}, expected {shape}")
    if not bool(torch.isfinite(leaf).all()):
        raise ValueError(f"param {path} holds NaN or Inf values")


def _check_dtype(leaves: dict[str, Tensor]) -> None:
    """Raise unless every leaf has one dtype of ``PARAM_DTYPES``; a leaf that differs from the most common
    dtype is named."""
    counts = collections.Counter(t.dtype for t in leaves.values())
    common = counts.most_common(1)[0][0]
    rule = ("params must all be float32 or all float64 (mixed precision is matmul_dtype=torch.bfloat16 with "
            "float32 params)")
    if len(counts) > 1:
        path, odd = next((p, t.dtype) for p, t in leaves.items() if t.dtype != common)
        raise TypeError(f"param {path} is {odd} and the other params are {common}; {rule}")
    if common not in PARAM_DTYPES:
        raise TypeError(f"params are {common}; {rule}")


def _leading_dims(leaf, shape: tuple[int, ...]) -> tuple[int, ...]:
    # A stack adds exactly one leading dimension; anything else is a shape error reported by the caller.
    if isinstance(leaf, Tensor) and leaf.ndim == len(shape) + 1 and tuple(leaf.shape[1:]) == shape:
        return (leaf.shape[0],)
    return ()


def examples_of(params: Params, data, *, scale: float | None = None, name: str = "x") -> Tensor:
    """The opening of every public function that takes params and data: ``params`` checked (one model, well
    formed), ``data`` validated for its model (``funcvae.inputs.as_examples``) and returned as
    (N, features) in the params' dtype and device."""
    check_params(params)
    return as_examples(data, params.model, scale=scale, like=some_leaf(params), name=name)
