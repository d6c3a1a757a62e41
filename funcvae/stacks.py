"""Stacks of models: N param trees of one model as one ``Params`` whose leaves have a leading dimension N,
so that ``vmap`` over that dimension trains all N in one step (``fit`` accepts a stack)."""

from __future__ import annotations

from collections.abc import Iterable

import optree
import torch

from funcvae.model import Params
from funcvae.contract import check_params, stack_size


def stack(models: Iterable[Params]) -> Params:
    """One ``Params`` holding ``models`` (any iterable of Params of one model) along a new leading dimension
    of every leaf."""
    if isinstance(models, Params) or not isinstance(models, Iterable):
        raise TypeError(f"stack takes an iterable of Params (a list, a generator), got {type(models).__name__}")
    models = list(models)
    if not models:
        raise ValueError("stack needs at least one model")
    for p in models:
        check_params(p)
    kinds = {p.model for p in models}
    if len(kinds) > 1:
        raise ValueError(f"stacked params must share one model, got {len(kinds)} different ones")
    trees = [p.tree for p in models]
    return Params(models[0].model, optree.tree_map(lambda *leaves: torch.stack(leaves), *trees))


def unstack(params: Params) -> list[Params]:
    """The N models of a stack, as separate ``Params``."""
    n = stack_size(params)
    if n is None:
        raise ValueError("params hold one model, not a stack")
    return [Params(params.model, optree.tree_map(lambda t: t[i], params.tree)) for i in range(n)]
