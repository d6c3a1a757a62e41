"""The Ladder VAE's pure functions: per-group log q and log p against an independent computation with
torch.distributions and the merge written with plain precisions, the merge itself, eps = 0, vmap, shapes."""

import optree
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal
from torch.func import vmap

from funcvae import ladder

TIGHT = dict(rtol=1e-10, atol=1e-10)


@st.composite
def ladders(draw):
    """(float64 tree, sizes, x, eps) of a small random Ladder VAE with 1 to 3 stochastic layers."""
    depth = draw(st.integers(1, 3))
    sizes = {"hidden": tuple(draw(st.lists(st.integers(1, 6), min_size=depth, max_size=depth))),
             "latents": tuple(draw(st.lists(st.integers(1, 4), min_size=depth, max_size=depth))),
             "activation": draw(st.sampled_from(["relu", "tanh", "elu"]))}
    features, seed = draw(st.integers(1, 8)), draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    tree = optree.tree_map(lambda t: 2.0 * t.double(), ladder.init(gen, features, **sizes))
    x = torch.rand(features, generator=gen, dtype=torch.float64)
    eps = {k: torch.randn(n, generator=gen, dtype=torch.float64) for k, n in ladder.groups(sizes["latents"]).items()}
    return tree, sizes, x, eps


def linear(layer, x):
    return F.linear(x, layer["kernel"], layer["bias"])


def gaussian_of(head, d):
    return linear(head["mean"], d), linear(head["logvar"], d).clamp(-30, 20)


def reference_posterior(tree, sizes, x, eps):
    """The Ladder VAE's q written out independently: plain precisions, Normal.log_prob."""
    act = {"relu": torch.relu, "tanh": torch.tanh, "elu": F.elu}[sizes["activation"]]
    names = [f"z{i + 1}" for i in range(len(sizes["latents"]))]
    up, d = {}, x
    for name in names:
        d = act(linear(tree["encoder"][name]["hidden"], d))
        up[name] = gaussian_of(tree["encoder"][name], d)
    z, log_q, means = {}, {}, {}
    for i in reversed(range(len(names))):
        mean, logvar = up[names[i]]
        var = logvar.exp()
        if i < len(names) - 1:
            head = tree["top_down"][names[i]]
            mean_p, logvar_p = gaussian_of(head, act(linear(head["hidden"], z[names[i + 1]])))
            var_p = logvar_p.exp()
            var_q = 1.0 / (1.0 / var + 1.0 / var_p)
            mean, var = (mean / var + mean_p / var_p) * var_q, var_q
        means[names[i]] = mean
        z[names[i]] = mean + var.sqrt() * eps[names[i]]
        log_q[names[i]] = Normal(mean, var.sqrt()).log_prob(z[names[i]]).sum()
    return z, log_q, means


@settings(max_examples=15, deadline=None)
@given(case=ladders())
def test_the_posterior_per_group_is_the_written_out_ladder_posterior(case):
    tree, sizes, x, eps = case
    z, log_q = ladder.posterior(tree, x, eps, **sizes)
    ref_z, ref_log_q, _ = reference_posterior(tree, sizes, x, eps)
    assert list(z) == list(log_q) == list(ladder.groups(sizes["latents"]))
    for name in z:
        assert z[name].shape == eps[name].shape and log_q[name].shape == ()
        torch.testing.assert_close(z[name], ref_z[name], **TIGHT)
        torch.testing.assert_close(log_q[name], ref_log_q[name], **TIGHT)
    torch.testing.assert_close(sum(log_q.values()), sum(ref_log_q.values()), **TIGHT)


@settings(max_examples=15, deadline=None)
@given(case=ladders())
def test_with_zero_noise_the_draw_is_the_merged_means(case):
    tree, sizes, x, eps = case
    zero = {k: torch.zeros_like(v) for k, v in eps.items()}
    z, _ = ladder.posterior(tree, x, zero, **sizes)
    _, _, means = reference_posterior(tree, sizes, x, zero)
    for name in z:
        torch.testing.assert_close(z[name], means[name], **TIGHT)


@settings(max_examples=15, deadline=None)
@given(case=ladders())
def test_an_ancestral_draw_has_the_written_out_prior_density(case):
    tree, sizes, _, eps = case
    z = ladder.sample_prior(tree, eps, **sizes)
    log_p = ladder.log_prior(tree, z, **sizes)
    names = list(ladder.groups(sizes["latents"]))
    assert list(z) == list(log_p) == names
    act = {"relu": torch.relu, "tanh": torch.tanh, "elu": F.elu}[sizes["activation"]]
    for i, name in enumerate(names):
        assert log_p[name].shape == () and bool(torch.isfinite(log_p[name]))
        if i == len(names) - 1:
            mean, logvar = torch.zeros_like(z[name]), torch.zeros_like(z[name])
        else:
            head = tree["top_down"][name]
            mean, logvar = gaussian_of(head, act(linear(head["hidden"], z[names[i + 1]])))
        torch.testing.assert_close(z[name], mean + (0.5 * logvar).exp() * eps[name], **TIGHT)
        torch.testing.assert_close(log_p[name], Normal(mean, (0.5 * logvar).exp()).log_prob(z[name]).sum(), **TIGHT)


@settings(max_examples=15, deadline=None)
@given(logvars=st.lists(st.floats(-30, 20), min_size=2, max_size=2),
       means=st.lists(st.floats(-5, 5), min_size=2, max_size=2))
def test_the_merged_precision_is_the_sum_of_precisions(logvars, means):
    mean_hat, mean_p, logvar_hat, logvar_p = (torch.tensor([v], dtype=torch.float64) for v in (*means, *logvars))
    mean_q, logvar_q = ladder.merge(mean_hat, logvar_hat, mean_p, logvar_p)
    torch.testing.assert_close(torch.exp(-logvar_q), torch.exp(-logvar_hat) + torch.exp(-logvar_p), rtol=1e-12, atol=0)
    assert logvar_q <= torch.minimum(logvar_hat, logvar_p) and bool(torch.isfinite(mean_q))
    # The mean is a convex combination: between the two means, nearer the more precise one.
    assert torch.minimum(mean_hat, mean_p) - 1e-12 <= mean_q <= torch.maximum(mean_hat, mean_p) + 1e-12
    weighted = (mean_hat * torch.exp(-logvar_hat) + mean_p * torch.exp(-logvar_p)) * torch.exp(logvar_q)
    torch.testing.assert_close(mean_q, weighted, rtol=1e-12, atol=1e-12)


def test_shapes_names_and_tree_layout():
    sizes = {"hidden": (12, 10, 8), "latents": (5, 4, 3), "activation": "relu"}
    tree = ladder.init(torch.Generator().manual_seed(0), 20, **sizes)
    assert ladder.groups(sizes["latents"]) == {"z1": 5, "z2": 4, "z3": 3}
    assert list(tree) == ["encoder", "top_down", "decoder"] and "prior" not in tree
    assert list(tree["encoder"]) == ["z1", "z2", "z3"] and list(tree["top_down"]) == ["z1", "z2"]
    assert tree["encoder"]["z2"]["hidden"]["kernel"].shape == (10, 12)
    assert tree["top_down"]["z1"]["hidden"]["kernel"].shape == (12, 4)
    assert tree["decoder"]["out"]["kernel"].shape == (20, 12)
    eps = {k: torch.randn(n) for k, n in ladder.groups(sizes["latents"]).items()}
    z, _ = ladder.posterior(tree, torch.rand(20), eps, **sizes)
    assert ladder.decode(tree, z, **sizes).shape == (20,)
    assert "top_down" not in ladder.init(torch.Generator().manual_seed(0), 20, hidden=(8,), latents=(3,),
                                         activation="relu")
    with pytest.raises(ValueError, match="one size per stochastic layer"):
        ladder.init(torch.Generator(), 20, hidden=(8,), latents=(3, 2), activation="relu")


def test_vmap_over_a_batch_equals_a_loop():
    sizes = {"hidden": (12, 10), "latents": (5, 3), "activation": "elu"}
    gen = torch.Generator().manual_seed(1)
    tree = ladder.init(gen, 20, **sizes)
    x = torch.rand(6, 20, generator=gen)
    eps = {k: torch.randn(6, n, generator=gen) for k, n in ladder.groups(sizes["latents"]).items()}

    def one(tree, x, eps):
        z, log_q = ladder.posterior(tree, x, eps, **sizes)
        return z, log_q, ladder.log_prior(tree, z, **sizes), ladder.decode(tree, z, **sizes), \
            ladder.sample_prior(tree, eps, **sizes)

    batched = vmap(one, in_dims=(None, 0, 0))(tree, x, eps)
    for i in range(6):
        looped = one(tree, x[i], {k: v[i] for k, v in eps.items()})
        torch.testing.assert_close(optree.tree_map(lambda t: t[i], batched), looped)


def test_compiled_batched_elbo_matches_eager_and_has_gradients():
    sizes = {"hidden": (12, 10), "latents": (5, 3), "activation": "relu"}
    gen = torch.Generator().manual_seed(2)
    tree = ladder.init(gen, 20, **sizes)
    x = torch.rand(4, 20, generator=gen)
    eps = {k: torch.randn(4, n, generator=gen) for k, n in ladder.groups(sizes["latents"]).items()}

    def negative_elbo(tree, x, eps):
        z, log_q = ladder.posterior(tree, x, eps, **sizes)
        log_p = ladder.log_prior(tree, z, **sizes)
        recon = F.binary_cross_entropy_with_logits(ladder.decode(tree, z, **sizes), x, reduction="sum")
        return recon + sum(log_q[k] - log_p[k] for k in log_q)

    def loss(tree):
        return vmap(negative_elbo, in_dims=(None, 0, 0))(tree, x, eps).mean()

    compiled = torch.compile(torch.func.grad_and_value(loss), backend="eager", fullgraph=True)
    grads, value = compiled(tree)
    eager_grads, eager_value = torch.func.grad_and_value(loss)(tree)
    torch.testing.assert_close(value, eager_value)
    torch.testing.assert_close(grads, eager_grads)
