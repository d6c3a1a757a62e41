"""funcvae._runtime.trees: optree's leaves and unflatten, written with tree_map (which dynamo runs itself)."""

from typing import NamedTuple

import optree
import torch
from hypothesis import given, settings, strategies as st

import funcvae
from funcvae._runtime import trees
from funcvae.model import Params


class Pair(NamedTuple):
    a: object
    b: object


def _trees():
    leaf = st.integers(0, 5).map(lambda n: torch.full((n,), float(n)))
    return st.recursive(leaf | st.none(), lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abcde"), kids, max_size=3), st.builds(Pair, kids, kids)), max_leaves=12)


def _same(a, b):
    la, sa = optree.tree_flatten(a, namespace="funcvae")
    lb, sb = optree.tree_flatten(b, namespace="funcvae")
    return sa == sb and all(x is y for x, y in zip(la, lb))


@settings(max_examples=60)
@given(tree=_trees())
def test_leaves_and_like_are_optrees_flatten_and_unflatten(tree):
    expected, spec = optree.tree_flatten(tree, namespace="funcvae")
    got = trees.leaves(tree)
    assert len(got) == len(expected) and all(x is y for x, y in zip(got, expected))
    new = [t + 1 for t in got]
    assert _same(trees.like(tree, new), optree.tree_unflatten(spec, new))


def test_params_and_a_compiled_trace_give_the_same_trees():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    assert _same(trees.like(params, trees.leaves(params)), params)
    assert isinstance(trees.like(params, trees.leaves(params)), Params)

    def plus_one(tree):
        return trees.like(tree, [t + 1 for t in trees.leaves(tree)])
    compiled = torch.compile(plus_one, backend="eager", fullgraph=True)(params.tree)
    eager = plus_one(params.tree)
    assert optree.tree_structure(compiled) == optree.tree_structure(eager)
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(compiled), optree.tree_leaves(eager)))
