"""The pure optimisers: the iterates of torch.optim's Adam, AdamW and SGD, clipping, chaining, the non-finite
guard, DP-SGD's aggregation, hyperparameters in the state (a stack is vmap of one update), schedules, purity,
and convergence on a table of problems."""

import math

import optree
import pytest
import torch
import torch._dynamo.testing
from hypothesis import given, settings, strategies as st
from torch.func import vmap

import funcvae
from funcvae import schedules
from funcvae._runtime.compiling import has_cpp_compiler
from funcvae.optim import (AdamState, ApplyIfFiniteState, HyperState, SgdState, _all_finite, adam, adamw, applied,
                           apply_if_finite, apply_updates, chain, clip_by_global_norm, differentially_private_aggregate,
                           sgd)


def tree_of(seed):
    g = torch.Generator().manual_seed(seed)
    return {"dense": {"kernel": torch.randn(7, 5, generator=g), "bias": torch.randn(7, generator=g)},
            "scale": torch.randn(3, 2, 2, generator=g), "z": torch.randn((), generator=g)}


def random_grads(params, g, scale=3.0):
    return optree.tree_map(lambda t: torch.randn(t.shape, generator=g) * scale, params)


def stack(*trees):
    return optree.tree_map(lambda *t: torch.stack(t), *trees, namespace="funcvae")


def global_norm(tree):
    return torch.sqrt(sum(t.pow(2).sum() for t in optree.tree_leaves(tree, namespace="funcvae")))


def assert_trees_close(a, b, **tolerances):
    assert optree.tree_structure(a, namespace="funcvae") == optree.tree_structure(b, namespace="funcvae")
    for x, y in zip(optree.tree_leaves(a, namespace="funcvae"), optree.tree_leaves(b, namespace="funcvae")):
        torch.testing.assert_close(x, y, **tolerances)


def against_torch(opt, torch_opt, steps=30, lr_at=None, seed=1):
    """Run ``opt`` and ``torch_opt(list of leaves)`` on the same random gradients; return both final trees.
    ``lr_at(step)``: the learning rate the torch optimiser is given before each step."""
    params = tree_of(0)
    reference = [t.clone().requires_grad_() for t in optree.tree_leaves(params)]
    theirs = torch_opt(reference)
    state = opt.init(params)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        grads = random_grads(params, g)
        for ref, grad in zip(reference, optree.tree_leaves(grads)):
            ref.grad = grad.clone()
        if lr_at is not None:
            for group in theirs.param_groups:
                group["lr"] = lr_at(step)
        theirs.step()
        updates, state = opt.update(grads, state, params)
        params = apply_updates(params, updates)
    return params, reference, state


@pytest.mark.parametrize("lr, b1, b2, eps", [(1e-3, 0.9, 0.999, 1e-8), (3e-2, 0.5, 0.99, 1e-6), (1e-1, 0.0, 0.9, 1e-3)])
def test_adam_matches_torch_optim_adam(lr, b1, b2, eps):
    params, reference, state = against_torch(adam(lr, b1, b2, eps),
                                             lambda p: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps))
    for ours, ref in zip(optree.tree_leaves(params), reference):
        torch.testing.assert_close(ours, ref.detach())
    assert state.count.ndim == 0 and int(state.count) == 30


@pytest.mark.parametrize("lr, b1, b2, eps, wd", [(1e-3, 0.9, 0.999, 1e-8, 1e-2), (3e-2, 0.5, 0.99, 1e-6, 0.5),
                                                 (1e-1, 0.0, 0.9, 1e-3, 0.0)])
def test_adamw_matches_torch_optim_adamw(lr, b1, b2, eps, wd):
    params, reference, state = against_torch(
        adamw(lr, b1, b2, eps, wd), lambda p: torch.optim.AdamW(p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd))
    for ours, ref in zip(optree.tree_leaves(params), reference):
        torch.testing.assert_close(ours, ref.detach())
    assert int(state.count) == 30 and float(state.hyper["weight_decay"]) == wd


def test_adamw_decays_the_weights_on_a_zero_gradient():
    params, zero = {"w": torch.full((3,), 2.0)}, {"w": torch.zeros(3)}
    opt = adamw(0.1, weight_decay=0.5)
    updates, _ = opt.update(zero, opt.init(params), params)
    torch.testing.assert_close(updates["w"], -0.1 * 0.5 * params["w"])


@pytest.mark.parametrize("lr, momentum, nesterov", [(0.1, 0.0, False), (0.05, 0.9, False), (0.05, 0.9, True),
                                                    (0.2, 0.3, True)])
def test_sgd_matches_torch_optim_sgd(lr, momentum, nesterov):
    params, reference, state = against_torch(
        sgd(lr, momentum, nesterov), lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, nesterov=nesterov))
    for ours, ref in zip(optree.tree_leaves(params), reference):
        torch.testing.assert_close(ours, ref.detach())
    assert isinstance(state, SgdState) and int(state.count) == 30


@pytest.mark.parametrize("make, torch_opt", [
    (adam, lambda p: torch.optim.Adam(p, lr=1.0)),
    (lambda lr: adamw(lr, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=1.0, weight_decay=0.1)),
    (lambda lr: sgd(lr, 0.9, nesterov=True), lambda p: torch.optim.SGD(p, lr=1.0, momentum=0.9, nesterov=True)),
])
def test_a_schedule_gives_the_iterates_of_a_torch_optimiser_whose_lr_follows_it(make, torch_opt):
    schedule = schedules.cosine_decay(0.05, 20, alpha=0.1)
    lr_at = lambda step: float(schedule(torch.tensor(step)))  # noqa: E731
    params, reference, state = against_torch(make(schedule), torch_opt, lr_at=lr_at)
    for ours, ref in zip(optree.tree_leaves(params), reference):
        torch.testing.assert_close(ours, ref.detach())
    assert lr_at(0) == pytest.approx(0.05) and lr_at(29) == pytest.approx(0.005)  # it did decay over the run


def test_clip_by_global_norm_scales_to_min_of_norm_and_max_keeping_direction():
    opt = clip_by_global_norm(2.0)
    for scale in (0.01, 0.1, 1.0, 10.0):
        grads = optree.tree_map(lambda t: t * scale, tree_of(3))
        norm = global_norm(grads)
        state = opt.init(grads)
        updates, new_state = opt.update(grads, state, grads)
        torch.testing.assert_close(global_norm(updates), torch.clamp(norm, max=2.0))
        factor = global_norm(updates) / norm  # one factor for every leaf: the direction is unchanged
        assert_trees_close(updates, optree.tree_map(lambda t: t * factor, grads))
        assert new_state is state


def test_chain_of_clip_and_adam_is_the_two_one_after_the_other():
    params = tree_of(0)
    chained = chain(clip_by_global_norm(1.0), adam(1e-2))
    clip, inner = clip_by_global_norm(1.0), adam(1e-2)
    state, clip_state, inner_state = chained.init(params), clip.init(params), inner.init(params)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = random_grads(params, g)
        updates, state = chained.update(grads, state, params)
        clipped, clip_state = clip.update(grads, clip_state, params)
        by_hand, inner_state = inner.update(clipped, inner_state, params)
        for a, b in zip(optree.tree_leaves(updates), optree.tree_leaves(by_hand)):
            assert torch.equal(a, b)
        params = apply_updates(params, updates)
    assert isinstance(state, tuple) and isinstance(state[0], HyperState) and isinstance(state[1], AdamState)
    assert chained.name == "chain(clip_by_global_norm(1.0), adam(lr=0.01, b1=0.9, b2=0.999, eps=1e-08))"


def test_chain_refuses_a_per_example_transform_after_the_first_and_non_transforms():
    dp = differentially_private_aggregate(1.0, 1.0)
    assert chain(dp, adam(1e-3)).per_example
    with pytest.raises(ValueError, match="first"):
        chain(adam(1e-3), dp)
    with pytest.raises(TypeError):
        chain()
    with pytest.raises(TypeError):
        chain(adam(1e-3), torch.optim.Adam)


def poisoned(tree, value=float("nan")):
    bad = optree.tree_map(torch.clone, tree)
    bad["dense"]["kernel"][2, 3] = value
    return bad


@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_value", "inf_value"])
def test_apply_if_finite_skips_a_non_finite_step(bad, freeze):
    params = tree_of(0)
    opt = apply_if_finite(chain(clip_by_global_norm(5.0), adam(1e-2)), freeze=freeze)
    g = torch.Generator().manual_seed(4)
    state = opt.init(params)
    updates, state = opt.update(random_grads(params, g), state, params, value=torch.tensor([1.0, 2.0]))
    assert bool(state.ok) and bool(state.live) and int(state.skipped) == 0
    params = apply_updates(params, updates)
    grads, value = random_grads(params, g), torch.tensor([1.0, 2.0])
    if bad.endswith("grad"):
        grads = poisoned(grads, float("nan") if bad == "nan_grad" else float("inf"))
    else:
        value[1] = float("nan") if bad == "nan_value" else -float("inf")
    updates, new_state = opt.update(grads, state, params, value=value)
    for u in optree.tree_leaves(updates):
        assert torch.equal(u, torch.zeros_like(u))
    for old, new in zip(optree.tree_leaves(state.inner), optree.tree_leaves(new_state.inner)):
        assert torch.equal(old, new)
    assert not bool(new_state.ok) and int(new_state.skipped) == 1 and applied(new_state) is new_state.ok
    assert bool(new_state.live) is (not freeze)
    # The next finite step: applied unless the guard froze.
    updates, last = opt.update(random_grads(params, g), new_state, params, value=torch.tensor([1.0, 2.0]))
    assert bool(last.ok) is (not freeze) and int(last.skipped) == (2 if freeze else 1)
    assert bool(last.live) is (not freeze)
    moved = any(bool(u.abs().sum() > 0) for u in optree.tree_leaves(updates))
    assert moved is (not freeze)
    assert int(last.inner[1].count) == (1 if freeze else 2)


def test_apply_if_finite_passes_finite_steps_through_unchanged():
    params, g = tree_of(0), torch.Generator().manual_seed(5)
    guarded, plain = apply_if_finite(adam(1e-2)), adam(1e-2)
    state, plain_state = guarded.init(params), plain.init(params)
    for _ in range(3):
        grads = random_grads(params, g)
        updates, state = guarded.update(grads, state, params)
        expected, plain_state = plain.update(grads, plain_state, params)
        for a, b in zip(optree.tree_leaves(updates), optree.tree_leaves(expected)):
            assert torch.equal(a, b)
    assert isinstance(state, ApplyIfFiniteState) and bool(state.ok) and int(state.skipped) == 0
    assert applied(chain(adam(1e-3)).init(params)) is None and applied(plain_state) is None
    assert applied((HyperState({}), state)) is state.ok


def _bits(t):
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("freeze", [False, True])
@pytest.mark.parametrize("value", [math.nan, -math.inf, 1.0])
def test_the_guards_choice_on_the_host_is_its_selection_on_the_device_bit_for_bit(monkeypatch, freeze, value):
    """Eager on a CPU the guard picks a tree by reading its flag; compiled, under vmap or on a GPU it selects
    with ``where``. Both give the same trees, bit for bit, through a finite step, the bad one and the next."""
    params = tree_of(0)
    opt = apply_if_finite(chain(clip_by_global_norm(5.0), adam(1e-2)), freeze=freeze)

    def run(on_host):
        monkeypatch.setattr(funcvae.optim, "_on_host", lambda flag: on_host)
        g, state, seen = torch.Generator().manual_seed(3), opt.init(params), []
        for v in (1.0, value, 1.0):
            updates, state = opt.update(poisoned(random_grads(params, g), v), state, params)
            seen.append((updates, state))
        return optree.tree_leaves(seen)

    host, device = run(True), run(False)
    assert len(host) == len(device)
    for a, b in zip(host, device):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def test_the_guard_reads_its_flag_only_from_a_plain_cpu_tensor_outside_traces_and_transforms():
    flag = torch.tensor(True)
    assert funcvae.optim._on_host(flag)
    assert not funcvae.optim._on_host(flag.to("meta"))
    seen = []
    vmap(lambda f: seen.append(funcvae.optim._on_host(f)) or f)(torch.ones(2, dtype=torch.bool))
    torch.compile(lambda f: seen.append(funcvae.optim._on_host(f)) or ~f, backend="eager", fullgraph=True)(flag)
    with torch._subclasses.FakeTensorMode() as fake:
        seen.append(funcvae.optim._on_host(fake.from_tensor(flag)))
    assert seen == [False, False, False]


def per_example_grads(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    params = tree_of(0)
    return optree.tree_map(lambda t: torch.randn((n, *t.shape), generator=g) * scale, params)


def test_dp_aggregate_clips_each_example_and_ignores_padding_rows():
    n, clip = 6, 1.5
    # Rows of very different norms: some under the clip norm, some far over it.
    grads = per_example_grads(n, 0)
    scales = torch.tensor([0.01, 0.05, 1.0, 3.0, 0.02, 10.0])
    grads = optree.tree_map(lambda t: t * scales.reshape(-1, *[1] * (t.ndim - 1)), grads)
    padded = optree.tree_map(lambda t: torch.cat([t, 1e3 * torch.randn((3, *t.shape[1:]))]), grads)
    weights = torch.tensor([1.0] * n + [0.0] * 3)
    zero_noise = optree.tree_map(torch.zeros_like, tree_of(0))
    opt = differentially_private_aggregate(clip, noise_multiplier=0.0)
    params = tree_of(0)
    out, state = opt.update(padded, opt.init(params), params, weights=weights, noise=zero_noise)
    rows = [optree.tree_map(lambda t: t[i], grads) for i in range(n)]
    norms = torch.stack([global_norm(r) for r in rows])
    assert (norms < clip).any() and (norms > clip).any()
    clipped = [optree.tree_map(lambda t: t * min(1.0, clip / float(nrm)), r) for r, nrm in zip(rows, norms)]
    for c, nrm in zip(clipped, norms):
        torch.testing.assert_close(global_norm(c), torch.clamp(nrm, max=clip))
    expected = optree.tree_map(lambda *t: torch.stack(t).sum(0) / n, *clipped)
    assert_trees_close(out, expected, rtol=1e-5, atol=1e-6)
    assert isinstance(state, HyperState) and opt.per_example


def test_dp_aggregate_noise_has_std_multiplier_times_clip_over_rows():
    n, clip, nm, draws = 8, 0.7, 1.3, 400
    params = tree_of(0)
    opt = differentially_private_aggregate(clip, nm)
    state = opt.init(params)
    grads = per_example_grads(n + 2, 1, scale=0.0)  # zero gradients: what comes out is the noise alone
    weights = torch.tensor([1.0] * n + [0.0, 0.0])
    g = torch.Generator().manual_seed(2)
    noises = [random_grads(params, g, scale=1.0) for _ in range(draws)]
    outs = torch.stack([torch.cat([t.flatten() for t in optree.tree_leaves(
        opt.update(grads, state, params, weights=weights, noise=z)[0])]) for z in noises])
    count = outs.numel()
    expected = nm * clip / n
    # The sample std of m normal draws has a standard error of std / sqrt(2 m); the mean, std / sqrt(m).
    assert abs(float(outs.std()) - expected) < 5 * expected / math.sqrt(2 * count)
    assert abs(float(outs.mean())) < 5 * expected / math.sqrt(count)


@pytest.mark.parametrize("make_a, make_b", [
    (lambda: adam(1e-3), lambda: adam(1e-2)),
    (lambda: adamw(1e-3, weight_decay=0.1), lambda: adamw(3e-2, weight_decay=0.0)),
    (lambda: sgd(0.1, momentum=0.5), lambda: sgd(0.01, momentum=0.9)),
    (lambda: sgd(0.1, momentum=0.5, nesterov=True), lambda: sgd(0.1, momentum=0.9, nesterov=True)),
    (lambda: apply_if_finite(chain(clip_by_global_norm(0.5), adam(1e-3))),
     lambda: apply_if_finite(chain(clip_by_global_norm(50.0), adam(1e-1)))),
])
def test_a_stack_of_optimisers_is_vmap_of_one_update_over_stacked_states(make_a, make_b):
    a, b = make_a(), make_b()
    assert a.update is b.update  # the same function: one compiled step serves both
    params = tree_of(0)
    sa, sb = a.init(params), b.init(params)
    stacked_state, stacked_params = stack(sa, sb), stack(params, params)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        ga, gb = random_grads(params, g), random_grads(params, g)
        updates, stacked_state = vmap(a.update)(stack(ga, gb), stacked_state, stacked_params)
        ua, sa = a.update(ga, sa, params)
        ub, sb = b.update(gb, sb, params)
        assert_trees_close(updates, stack(ua, ub))
    assert_trees_close(stacked_state, stack(sa, sb))
    assert not torch.allclose(updates["dense"]["kernel"][0], updates["dense"]["kernel"][1])


def test_hyperparameters_are_float64_tensors_in_the_state():
    params = tree_of(0)
    state = chain(clip_by_global_norm(2.0), adamw(1e-3, weight_decay=0.2), sgd(0.1, 0.9)).init(params)
    hypers = {**state[0].hyper, **state[1].hyper, **{f"sgd_{k}": v for k, v in state[2].hyper.items()}}
    assert hypers.keys() == {"max_norm", "lr", "weight_decay", "sgd_lr", "sgd_momentum"}
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in hypers.values())
    assert float(hypers["lr"]) == 1e-3 and float(hypers["weight_decay"]) == 0.2 and float(hypers["max_norm"]) == 2.0
    dp = differentially_private_aggregate(1.5, 0.8).init(params)
    assert {k: float(v) for k, v in dp.hyper.items()} == {"clip_norm": 1.5, "noise_multiplier": 0.8}


def test_a_compiled_update_is_shared_by_optimisers_that_differ_only_in_numbers():
    counter = torch._dynamo.testing.CompileCounter()
    params, g = tree_of(0), torch.Generator().manual_seed(6)
    first, second = adam(1e-3), adam(1e-2)
    compiled = torch.compile(first.update, backend=counter, fullgraph=True)
    sa, sb = first.init(params), second.init(params)
    ea, eb = sa, sb
    for _ in range(3):
        grads = random_grads(params, g)
        (ua, sa), (ub, sb) = compiled(grads, sa, params), compiled(grads, sb, params)
        (va, ea), (vb, eb) = first.update(grads, ea, params), second.update(grads, eb, params)
        assert_trees_close(ua, va)
        assert_trees_close(ub, vb)  # the second optimiser's own lr, from its state
    assert counter.frame_count == 1  # traced once, for both optimisers and every step
    assert not torch.allclose(ua["dense"]["kernel"], ub["dense"]["kernel"])


@pytest.mark.parametrize("make", [
    lambda: adam(1e-2), lambda: adamw(1e-2), lambda: sgd(0.1, 0.9, nesterov=True),
    lambda: apply_if_finite(chain(clip_by_global_norm(1.0), adam(schedules.cosine_decay(0.1, 10)))),
])
def test_update_is_pure(make):
    params, grads = tree_of(0), tree_of(1)
    opt = make()
    state = opt.init(params)
    state = opt.update(grads, state, params)[1]
    before = [t.clone() for t in optree.tree_leaves((params, grads, state))]
    updates, new_state = opt.update(grads, state, params)
    apply_updates(params, updates)
    for old, now in zip(before, optree.tree_leaves((params, grads, state))):
        assert torch.equal(old, now)
    assert type(new_state) is type(state)
    assert optree.tree_structure(updates) == optree.tree_structure(params)


def test_dp_update_is_pure():
    params, grads, noise = tree_of(0), per_example_grads(4, 1), tree_of(2)
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0])
    opt = chain(differentially_private_aggregate(0.5, 1.0), adam(1e-2))
    state = opt.init(params)
    before = [t.clone() for t in optree.tree_leaves((params, grads, noise, weights, state))]
    opt.update(grads, state, params, weights=weights, noise=noise)
    for old, now in zip(before, optree.tree_leaves((params, grads, noise, weights, state))):
        assert torch.equal(old, now)


@pytest.mark.parametrize("make", [lambda: adam(1e-2), lambda: adamw(1e-2, weight_decay=0.1),
                                  lambda: apply_if_finite(chain(clip_by_global_norm(1.0), sgd(0.1, 0.9)))])
def test_optimisers_work_on_params_as_on_their_tree(make):
    params = funcvae.init(seed=0, hidden=(16,), latent=3)
    opt = make()
    state, tree_state = opt.init(params), opt.init(params.tree)
    g = torch.Generator().manual_seed(7)
    tree = params.tree
    for _ in range(3):
        grads = random_grads(tree, g, scale=0.1)
        updates, state = opt.update(funcvae.Params(params.model, grads), state, params)
        tree_updates, tree_state = opt.update(grads, tree_state, tree)
        assert isinstance(updates, funcvae.Params) and updates.model is params.model
        params, tree = apply_updates(params, updates), apply_updates(tree, tree_updates)
        assert isinstance(params, funcvae.Params) and params.model is updates.model
        for a, b in zip(optree.tree_leaves(params.tree), optree.tree_leaves(tree)):
            assert torch.equal(a, b)


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


@pytest.mark.parametrize("opt, steps", [
    (sgd(0.1), 200), (sgd(0.05, 0.9), 300), (sgd(0.05, 0.9, nesterov=True), 200),
    (adamw(0.1, weight_decay=0.0), 600), (chain(clip_by_global_norm(1.0), adam(0.1)), 600),
    (apply_if_finite(adam(schedules.cosine_decay(0.3, 600, alpha=0.01))), 600),
])
def test_the_other_optimisers_converge_on_the_parabola(opt, steps):
    params = tree_of(2)
    state, grad = opt.init(params), torch.func.grad(parabola)
    for _ in range(steps):
        updates, state = opt.update(grad(params), state, params)
        params = apply_updates(params, updates)
    for t in optree.tree_leaves(params):
        torch.testing.assert_close(t, torch.full_like(t, 3.0), atol=2e-2, rtol=0)


@pytest.mark.parametrize("make", [
    lambda: adam(0.0), lambda: adam(float("nan")), lambda: adam(1e-3, b1=1.0), lambda: adam(1e-3, eps=-1),
    lambda: adamw(1e-3, weight_decay=-0.1), lambda: sgd(0.0), lambda: sgd(0.1, momentum=1.0),
    lambda: sgd(0.1, momentum=-0.1), lambda: sgd(0.1, nesterov=True), lambda: clip_by_global_norm(0.0),
    lambda: differentially_private_aggregate(0.0, 1.0), lambda: differentially_private_aggregate(1.0, -1.0),
])
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_moments_of_a_stopped_gradient_reach_zero_instead_of_sticking_subnormal():
    smallest = 2.0 ** -149  # the smallest float32 subnormal
    # Plain decays stick there (0.9 and 0.999 of it round back up), where CPU arithmetic is slow.
    stuck = torch.full((4,), smallest)
    assert torch.equal(torch.lerp(stuck, torch.zeros(4), 0.1), stuck) and torch.equal(stuck * 0.999, stuck)
    params, zero = {"w": torch.ones(4)}, {"w": torch.zeros(4)}
    opt = adam(1e-3)
    hyper = opt.init(params).hyper
    state = opt.update(zero, AdamState(torch.tensor(10), {"w": stuck}, {"w": stuck}, hyper), params)[1]
    assert torch.equal(state.mu["w"], zero["w"]) and torch.equal(state.nu["w"], zero["w"])
    # A gradient that stops: its first moment reaches exactly zero (0.9**1000 * 1e-3 < 2**-149).
    state = opt.update({"w": torch.full((4,), 1e-3)}, opt.init(params), params)[1]
    for _ in range(1000):
        state = opt.update(zero, state, params)[1]
    assert torch.equal(state.mu["w"], zero["w"])


# The values that decide a selection's edges: zeros of both signs, the smallest normal number and the largest
# subnormal on either side, the smallest subnormal, infinities and NaN, beside ordinary numbers.
def _edges(dtype):
    info = torch.finfo(dtype)
    tiny, sub = info.tiny, info.tiny * (1 - info.eps)
    return [0.0, -0.0, tiny, -tiny, sub, -sub, tiny * info.eps, -tiny * info.eps, math.inf, -math.inf, math.nan,
            1.0, -2.5, 3e-30, info.max]


@settings(max_examples=40)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]), n=st.integers(1, 70))
def test_adams_update_keeps_the_bits_of_its_plain_formula(data, dtype, n):
    """The update's arithmetic (the flush as one hardshrink) gives, bit for bit, what the plain formula
    gives: lerp, addcmul, moments below the smallest normal number set to zero, bias-corrected
    step. Leaves of any length, values at every edge of the flush."""
    values = st.one_of(st.sampled_from(_edges(dtype)), st.floats(-1e3, 1e3, width=64 if dtype == torch.float64 else 32))
    def leaf():
        return torch.tensor(data.draw(st.lists(values, min_size=n, max_size=n)), dtype=dtype)
    g, m, v = leaf(), leaf(), leaf().abs()
    count = data.draw(st.integers(0, 50))
    opt = adam(1e-3)
    state = AdamState(torch.tensor(count), {"w": m}, {"w": v}, opt.init({"w": m}).hyper)
    updates, new = opt.update({"w": g}, state, {"w": m})
    tiny = torch.finfo(dtype).tiny
    mu = torch.lerp(m, g, 1 - 0.9)
    nu = torch.addcmul(v * 0.999, g, g, value=1 - 0.999)
    mu, nu = torch.where(mu.abs() < tiny, 0.0, mu), torch.where(nu < tiny, 0.0, nu)
    t = torch.tensor(count + 1, dtype=torch.float64)
    step, c2 = torch.stack([torch.tensor(1e-3, dtype=torch.float64) / (1 - 0.9 ** t),
                            torch.sqrt(1 - 0.999 ** t)]).to(dtype)
    expected = mu / (torch.sqrt(nu) / c2 + 1e-8) * -step
    for got, want in ((new.mu["w"], mu), (new.nu["w"], nu), (updates["w"], expected)):
        assert torch.equal(got.view(-1).nan_to_num(), want.view(-1).nan_to_num())
        assert torch.equal(got.isnan(), want.isnan())


@settings(max_examples=40)
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
       sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4))
def test_the_guard_finds_every_non_finite_value_and_no_other(data, dtype, sizes):
    values = st.one_of(st.sampled_from(_edges(dtype)), st.floats(width=32))
    tensors = [torch.tensor(data.draw(st.lists(values, min_size=k, max_size=k)), dtype=dtype) for k in sizes]
    assert bool(_all_finite(tensors)) == all(bool(torch.isfinite(t).all()) for t in tensors)


def test_the_guard_compiled_by_inductor_skips_a_non_finite_step():
    """inductor compiles C++ that may rewrite arithmetic: the guard's test (a sum of ``x * 0``) must still see
    a NaN and an infinity once compiled."""
    if not has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on CPU")
    params = tree_of(0)
    opt = apply_if_finite(adam(1e-2))
    update = torch.compile(opt.update, backend="inductor", fullgraph=True)
    state = opt.init(params)
    grads = random_grads(params, torch.Generator().manual_seed(1))
    for value, applied_ in ((1.0, True), (math.nan, False), (math.inf, False)):
        updates, new = update(poisoned(grads, value), state, params)
        assert bool(new.ok) is applied_ and int(new.skipped) == (not applied_)
        moved = any(bool(u.abs().sum() > 0) for u in optree.tree_leaves(updates))
        assert moved is applied_
