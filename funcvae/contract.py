"""The model contract, checked before any work: a ``Model``'s functions run once as every step runs them
(``structure``), and ``Params`` are a well-formed tree of one model or a stack (``check_params``,
``stack_size``); ``examples_of`` opens every public function that takes params and data. What is checked and
when: docs/training.md, "Bad input"."""

from __future__ import annotations

import collections
import functools
from typing import Callable

import optree
import torch
from torch import Tensor

from funcvae import likelihoods
from funcvae.inputs import as_examples
from funcvae.model import PARAM_DTYPES, Model, Params, check_keys, describe_value, leaves_by_path, some_leaf


@functools.lru_cache(maxsize=None)
def structure(model: Model) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{path: (shape, dtype)}`` of the model's freshly initialised tree, once the model has shown that it
    keeps the contract, before any work: ``init`` gives the same tree twice for one seed; ``encode`` and
    ``decode`` return the shapes the likelihood needs in the params' floating dtype for one example, and run
    as every step runs them (under ``torch.func.vmap``, on two examples) to the same values twice, drawing no
    random numbers and writing to none of their inputs. Raises ValueError (TypeError for a wrong dtype)
    naming the broken rule; cached per model (one check per model and process)."""
    params = model.init(0)
    leaves = leaves_by_path(params)
    again = leaves_by_path(model.init(0))
    if again.keys() != leaves.keys() or not all(torch.equal(again[p], t) for p, t in leaves.items()):
        raise ValueError("the model's init gave other params for the same seed: it must draw every random number "
                         "from the generator it is given (torch.randn(..., generator=gen)), not torch's global one")
    dtype = some_leaf(params).dtype
    with torch.no_grad():
        x = torch.zeros(model.features)
        _check_encoded(model, model.encode(params.tree, x), dtype)
        _check_decoded(model, model.decode(params.tree, torch.zeros(model.latent)), dtype)
        _check_batched(model, params.tree, leaves)
    return {path: (tuple(t.shape), t.dtype) for path, t in leaves.items()}


def _check_encoded(model: Model, out, dtype: torch.dtype) -> None:
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out)):
        raise ValueError(f"the model's encode must return (mean, logvar), got {describe_value(out)}")
    for name, t in zip(("mean", "logvar"), out):
        if tuple(t.shape) != (model.latent,):
            raise ValueError(f"the model's encode returned a {name} of shape {tuple(t.shape)} for one example "
                             f"of shape ({model.features},); expected ({model.latent},) (latent={model.latent})")
        _check_float("encode", name, t, dtype)


def _check_float(fn: str, name: str, t: Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise TypeError(f"the model's {fn} returned a {name} of dtype {t.dtype} for params of dtype {dtype}; it must "
                        "return floating-point tensors in the params' dtype")


def _check_decoded(model: Model, out, dtype: torch.dtype) -> None:
    want = (model.features,)
    learned = isinstance(model.likelihood, likelihoods.Gaussian) and model.likelihood.std is None
    parts = out if learned and isinstance(out, (tuple, list)) and len(out) == 2 else (out,) if not learned else None
    if parts is None or not all(isinstance(t, Tensor) and tuple(t.shape) == want for t in parts):
        expected = f"(mean, logvar), each of shape {want}" if learned else f"one tensor of shape {want}"
        raise ValueError(f"the model's decode must return {expected} for the {model.likelihood} likelihood, got "
                         f"{describe_value(out)}")
    for t in parts:
        _check_float("decode", "tensor", t, dtype)


def _check_batched(model: Model, tree: dict, leaves: dict[str, Tensor]) -> None:
    """``encode`` and ``decode`` on two examples under vmap, as a step runs them: no writes to the params
    (``leaves``: ``tree``'s by path) or the data, no random draws, twice the same values."""
    gen = torch.Generator().manual_seed(0)
    x, z = torch.rand(2, model.features, generator=gen), torch.randn(2, model.latent, generator=gen)
    kept = {path: t.clone() for path, t in leaves.items()}
    for name, fn, data in (("encode", model.encode, x), ("decode", model.decode, z)):
        before = data.clone()
        outs = [_under_vmap(name, fn, tree, data)]
        path = next((p for p, t in leaves.items() if not torch.equal(t, kept[p])), None)
        if path is not None:
            raise ValueError(f"the model's {name} wrote to param {path} in place; the functions must not change "
                             "their inputs (compute a new tensor instead)")
        if not torch.equal(before, data):
            raise ValueError(f"the model's {name} wrote to its input in place (x.clamp_(...), say), which would "
                             "change the caller's data; the functions must compute new tensors instead")
        outs.append(_under_vmap(name, fn, tree, data))
        if not all(torch.equal(a, b) for a, b in zip(*map(optree.tree_leaves, outs))):
            raise ValueError(f"the model's {name} gave other values for the same input: it must be a pure "
                             "function of the params and its input (the noise comes in as eps)")


#: What torch.func.vmap's errors say when a function breaks a rule of the contract, and the rule.
_RULES = (("data-dependent control flow", "it branches on a tensor's value (if x.sum() > 0, .item(), ...); under "
           "vmap and torch.compile a value is not known in Python: use torch.where"),
          ("random operation", "it draws random numbers (torch.randn, dropout, ...); the functions must be "
           "deterministic: the noise comes in as eps, drawn by funcvae"),
          ("inplace", "it writes in place to a tensor it was given; compute a new tensor instead"))


def _under_vmap(name: str, fn: Callable, tree: dict, data: Tensor):
    try:
        return torch.func.vmap(fn, in_dims=(None, 0), randomness="error")(tree, data)
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
    expected = structure(params.model)
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
