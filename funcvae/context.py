"""The context of a conditional VAE (``Model(..., context=K)``): labels or vectors, as the (N, K) floats its
functions take last.

Integer labels (N,) in [0, K) become one-hot vectors of size K; float vectors (N, K) pass as they are. The
context comes as ``context=`` or as the labels of a labelled dataset (torchvision's ``(image, label)``
items, read with their images); an explicit ``context=`` wins. Every check runs before any work.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from funcvae.checks import first_index
from funcvae.inputs import read_labelled


def examples_and_context(params, data, context=None, *, scale: float | None = None,
                         name: str = "x") -> tuple[Tensor, Tensor | None]:
    """The opening of a public function that takes params, data and a context: ``params`` checked, ``data``
    validated as (N, features) in the params' dtype and device (``contract.examples_of``), and the context as
    (N, K) there too, or None for an unconditional model."""
    from funcvae.contract import check_params, examples_of  # the contract opens data; this extends it

    check_params(params)
    data, labels = with_labels(data, params.model, context, name)
    x = examples_of(params, data, scale=scale, name=name)
    return x, chosen(params.model, context, labels, x.shape[0], like=x, name=name)


def with_labels(data, model, context, name: str) -> tuple:
    """``data`` and its labels (``inputs.read_labelled``: read once together) where a conditional model is given
    no explicit context; else, or where ``data`` is a tensor or array (which has no labels), ``data`` as it is
    and None (so a memory map is not read whole here)."""
    if model.context is None or context is not None or isinstance(data, (Tensor, np.ndarray)):
        return data, None
    return read_labelled(data, model, name)


def chosen(model, context, labels, n: int, *, like: Tensor, name: str, given: str = "context") -> Tensor | None:
    """``as_context`` of the explicit ``context`` (called ``given`` in errors) where there is one or the model is
    unconditional (which refuses it), else of the labels of the data called ``name``."""
    if context is not None or model.context is None:
        return as_context(model, context, n, like=like, name=given)
    return as_context(model, labels, n, like=like, name=f"{name}'s labels")


def as_context(model, context, n: int | None, *, like: Tensor, name: str = "context") -> Tensor | None:
    """``context`` for ``model`` as (N, K) in ``like``'s dtype and device: integer labels one-hot, float
    vectors as they are; ``n``: the number of examples it must match (None: any).

    Raises:
      ValueError: a context for an unconditional model, none for a conditional one, a wrong length or size,
        labels out of range, NaN or Inf.
      TypeError: a context that is not numbers.
    """
    k = model.context
    if k is None:
        if context is None:
            return None
        raise ValueError(f"the model is unconditional (context=None), but a {name} was given; a conditional model is "
                         "Model(..., context=K)")
    if context is None:
        raise ValueError(f"the model is conditional (context={k}): pass context= (integer labels in [0, {k}) or "
                         f"vectors of size {k}), or a labelled dataset whose items are (example, label)")
    c = _tensor(context, name)
    if n is not None and (c.ndim == 0 or c.shape[0] != n):
        raise ValueError(f"{name} has {c.shape[0] if c.ndim else 0} rows for {n} examples; give one label or vector "
                         "per example")
    if not c.is_floating_point():
        if c.ndim != 1:
            raise ValueError(f"integer {name} must be labels, shape (N,), got {tuple(c.shape)}; vectors are floats")
        c = c.to(torch.int64)
        bad = (c < 0) | (c >= k)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"{name} holds the label {int(c[i])} at index {i}, outside [0, {k}) for a model with "
                             f"context={k}")
        return torch.nn.functional.one_hot(c, k).to(dtype=like.dtype, device=like.device)
    if c.ndim != 2 or c.shape[1] != k:
        raise ValueError(f"{name} vectors must have shape (N, {k}) for a model with context={k}, got "
                         f"{tuple(c.shape)} (integer labels are (N,))")
    bad = ~torch.isfinite(c)
    if bool(bad.any()):
        raise ValueError(f"{name} holds {int(bad.sum())} NaN or Inf values (first at index {first_index(bad)})")
    return c.to(dtype=like.dtype, device=like.device)


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _tensor(context, name: str) -> Tensor:
    """Labels or vectors as one tensor: a tensor, an array, or a list of numbers or of 0-d/1-d tensors."""
    if isinstance(context, Tensor):
        c = context.detach()
    elif isinstance(context, np.ndarray):
        c = torch.from_numpy(np.ascontiguousarray(context))
    elif isinstance(context, (list, tuple)) and context and all(isinstance(v, Tensor) for v in context):
        c = torch.stack([v.detach().reshape(v.shape) for v in context])
    elif isinstance(context, (list, tuple, int, np.integer)):
        try:
            c = torch.as_tensor(np.asarray(context))
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be integer labels or float vectors, got {context!r:.80}") from e
    else:
        raise TypeError(f"{name} must be a tensor, array or list of integer labels or float vectors, got "
                        f"{type(context).__name__}")
    if not (c.is_floating_point() or c.dtype in _INTEGERS):
        raise TypeError(f"{name} must be integer labels or float vectors, got dtype {c.dtype}")
    return c.reshape(1) if c.ndim == 0 else c
