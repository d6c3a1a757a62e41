"""The pure Adam transform: the iterates of torch.optim.Adam, purity, and convergence on a table of problems."""

import optree
import pytest
import torch

from funcvae.optim import AdamState, adam, apply_updates


def tree_of(seed):
    g = torch.Generator().manual_seed(seed)
    return {"dense": {"kernel": torch.randn(7, 5, generator=g), "bias": torch.randn(7, generator=g)},
            "scale": torch.randn(3, 2, 2, generator=g), "z": torch.randn((), generator=g)}


@pytest.mark.parametrize("lr, b1, b2, eps", [(1e-3, 0.9, 0.999, 1e-8), (3e-2, 0.5, 0.99, 1e-6), (1e-1, 0.0, 0.9, 1e-3)])
def test_adam_matches_torch_optim_adam(lr, b1, b2, eps):
    params = tree_of(0)
    reference = [t.clone().requires_grad_() for t in optree.tree_leaves(params)]
    torch_adam = torch.optim.Adam(reference, lr=lr, betas=(b1, b2), eps=eps)
    opt = adam(lr, b1, b2, eps)
    state = opt.init(params)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        grads = optree.tree_map(lambda t: torch.randn(t.shape, generator=g) * 3, params)
        for ref, grad in zip(reference, optree.tree_leaves(grads)):
            ref.grad = grad.clone()
        torch_adam.step()
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    for ours, ref in zip(optree.tree_leaves(params), reference):
        torch.testing.assert_close(ours, ref.detach())
    assert state.count.ndim == 0 and int(state.count) == 30


def test_update_is_pure():
    params, grads = tree_of(0), tree_of(1)
    opt = adam(1e-2)
    state = opt.init(params)
    state = opt.update(grads, state, params)[1]
    before = [t.clone() for t in optree.tree_leaves((params, grads, state))]
    updates, new_state = opt.update(grads, state, params)
    apply_updates(params, updates)
    for old, now in zip(before, optree.tree_leaves((params, grads, state))):
        assert torch.equal(old, now)
    assert isinstance(new_state, AdamState)
    assert optree.tree_structure(updates) == optree.tree_structure(params)


def parabola(p):
    return sum(((t - 3.0) ** 2).sum() for t in optree.tree_leaves(p))


def rosenbrock(p):
    x, y = p["x"], p["y"]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("loss, start, optimum, lr, steps", [
    (parabola, tree_of(2), lambda t: torch.full_like(t, 3.0), 0.1, 600),
    (rosenbrock, {"x": torch.tensor(-1.0), "y": torch.tensor(1.5)}, torch.ones_like, 0.02, 4000),
])
def test_adam_converges(loss, start, optimum, lr, steps):
    opt = adam(lr)
    params, state = start, opt.init(start)
    grad = torch.func.grad(loss)
    for _ in range(steps):
        updates, state = opt.update(grad(params), state, params)
        params = apply_updates(params, updates)
    for t in optree.tree_leaves(params):
        torch.testing.assert_close(t, optimum(t), atol=2e-2, rtol=0)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(lr=float("nan")), dict(lr=1e-3, b1=1.0), dict(lr=1e-3, eps=-1)])
def test_bad_hyperparameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        adam(**kwargs)


def test_moments_of_a_stopped_gradient_reach_zero_instead_of_sticking_subnormal():
    smallest = 2.0 ** -149  # the smallest float32 subnormal
    # Plain decays stick there (0.9 and 0.999 of it round back up), where CPU arithmetic is slow.
    stuck = torch.full((4,), smallest)
    assert torch.equal(torch.lerp(stuck, torch.zeros(4), 0.1), stuck) and torch.equal(stuck * 0.999, stuck)
    params, zero = {"w": torch.ones(4)}, {"w": torch.zeros(4)}
    opt = adam(1e-3)
    state = opt.update(zero, AdamState(torch.tensor(10), {"w": stuck}, {"w": stuck}), params)[1]
    assert torch.equal(state.mu["w"], zero["w"]) and torch.equal(state.nu["w"], zero["w"])
    # A gradient that stops: its first moment reaches exactly zero (0.9**1000 * 1e-3 < 2**-149).
    state = opt.update({"w": torch.full((4,), 1e-3)}, opt.init(params), params)[1]
    for _ in range(1000):
        state = opt.update(zero, state, params)[1]
    assert torch.equal(state.mu["w"], zero["w"])
