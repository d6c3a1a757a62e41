"""Flow posteriors: log q is the change-of-variables density of the draw, checked against an autodiff Jacobian;
the IAF is autoregressive step by step; the full-covariance draw has covariance L L^T; vmap is a loop."""

import math

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacfwd, vmap

from funcvae import flows

TIGHT = dict(rtol=1e-9, atol=1e-9)  # float64 rounding, with room for a few hundred operations
Z = 5.0  # Monte Carlo bounds are Z standard errors


def float64(tree):
    return optree.tree_map(lambda t: t.to(torch.float64), tree)


@st.composite
def heads(draw, kind):
    """(sample function, float64 head, h, eps, sizes) of a small random full or IAF posterior."""
    latent, width, seed = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    if kind == "full":
        head, fn, sizes = flows.full_init(gen, width, latent), flows.full_sample, {"latent": latent}
    else:
        steps, hidden = draw(st.integers(1, 3)), draw(st.integers(1, 6))
        head, fn, sizes = flows.iaf_init(gen, width, latent, steps, hidden), flows.iaf_sample, {
            "latent": latent, "steps": steps, "hidden": hidden}
    # Scaled-up weights, so the flows are far from the identity and the check is not trivially passed.
    head = optree.tree_map(lambda t: 2.0 * t, float64(head))
    h = torch.randn(width, generator=gen, dtype=torch.float64)
    eps = torch.randn(latent, generator=gen, dtype=torch.float64)
    return fn, head, h, eps, sizes


def change_of_variables(fn, head, h, eps):
    """log N(eps; 0, I) - log|det dz/deps|, the Jacobian by forward-mode autodiff."""
    jac = jacfwd(lambda e: fn(head, h, e)[0])(eps)
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign != 0
    return -0.5 * (eps.numel() * math.log(2 * math.pi) + eps @ eps) - logdet


@pytest.mark.parametrize("kind", ["full", "iaf"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_log_q_is_the_change_of_variables_density(kind, data):
    fn, head, h, eps, _ = data.draw(heads(kind))
    z, log_q = fn(head, h, eps)
    assert z.shape == eps.shape and log_q.shape == ()
    torch.testing.assert_close(log_q, change_of_variables(fn, head, h, eps), **TIGHT)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_each_iaf_step_is_autoregressive_in_its_ordering(data):
    _, head, h, eps, sizes = data.draw(heads("iaf"))
    context = flows.nn.dense(head["context"], h)
    for t in range(sizes["steps"]):
        reverse = t % 2 == 1
        jac = jacfwd(lambda z: flows.iaf_step(head[f"step_{t}"], context, z, reverse)[0])(eps)
        sigma = torch.exp(flows.iaf_step(head[f"step_{t}"], context, eps, reverse)[1])
        # Output i depends only on inputs before it in the step's order, and on its own input through sigma.
        order = torch.arange(eps.numel() - 1, -1, -1) if reverse else torch.arange(eps.numel())
        in_order = jac[order][:, order]
        torch.testing.assert_close(in_order, torch.tril(in_order), rtol=0, atol=0)
        torch.testing.assert_close(torch.diagonal(jac), sigma, **TIGHT)


def test_one_iaf_step_makes_the_whole_jacobian_lower_triangular():
    gen = torch.Generator().manual_seed(0)
    head = float64(flows.iaf_init(gen, 4, 5, 1, 8))
    h, eps = torch.randn(4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    jac = jacfwd(lambda e: flows.iaf_sample(head, h, e)[0])(eps)
    assert torch.equal(jac, torch.tril(jac)) and bool((torch.diagonal(jac) > 0).all())
    rows, cols = torch.tril_indices(5, 5, offset=-1)
    assert bool((jac[rows, cols] != 0).all())  # the masks cut no more than they must


def test_the_first_iaf_output_still_depends_on_the_context():
    gen = torch.Generator().manual_seed(1)
    head = float64(flows.iaf_init(gen, 3, 2, 1, 4))
    m = jacfwd(lambda c: flows.iaf_step(head["step_0"], c, torch.zeros(2, dtype=torch.float64), False)[0])
    assert bool((m(torch.randn(4, dtype=torch.float64)).abs().sum(1) > 0).all())


def test_full_covariance_draws_have_covariance_l_l_transpose():
    gen = torch.Generator().manual_seed(2)
    latent, n = 3, 40_000
    head, h = float64(flows.full_init(gen, 4, latent)), torch.randn(4, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, latent, generator=gen, dtype=torch.float64)
    z, _ = vmap(flows.full_sample, in_dims=(None, None, 0))(head, h, eps)
    chol = jacfwd(lambda e: flows.full_sample(head, h, e)[0])(eps[0])
    assert torch.equal(chol, torch.tril(chol)) and bool((torch.diagonal(chol) > 0).all())
    cov = chol @ chol.T
    sample = torch.cov(z.T)
    # Var of a Gaussian sample covariance entry is (S_ii S_jj + S_ij^2) / n.
    se = torch.sqrt((torch.outer(torch.diagonal(cov), torch.diagonal(cov)) + cov**2) / n)
    assert bool(((sample - cov).abs() <= Z * se).all()), (sample, cov)


@pytest.mark.parametrize("kind", ["full", "iaf"])
def test_vmap_over_a_batch_equals_a_loop(kind):
    gen = torch.Generator().manual_seed(3)
    head = flows.full_init(gen, 6, 4) if kind == "full" else flows.iaf_init(gen, 6, 4, 3, 5)
    fn = flows.full_sample if kind == "full" else flows.iaf_sample
    h, eps = torch.randn(7, 6, generator=gen), torch.randn(7, 4, generator=gen)
    z, log_q = vmap(fn, in_dims=(None, 0, 0))(head, h, eps)
    for i in range(7):
        zi, lqi = fn(head, h[i], eps[i])
        torch.testing.assert_close(z[i], zi)
        torch.testing.assert_close(log_q[i], lqi)


@pytest.mark.parametrize("kind", ["full", "iaf"])
def test_gradients_reach_every_parameter(kind):
    gen = torch.Generator().manual_seed(4)
    head = flows.full_init(gen, 5, 3) if kind == "full" else flows.iaf_init(gen, 5, 3, 2, 4)
    fn = flows.full_sample if kind == "full" else flows.iaf_sample
    h, eps = torch.randn(5, generator=gen), torch.randn(3, generator=gen)

    def loss(head):
        z, log_q = fn(head, h, eps)
        return log_q + (z**2).sum()

    grads = torch.func.grad(loss)(head)
    for path, g in zip(*optree.tree_flatten_with_path(grads)[:2]):
        assert bool(torch.isfinite(g).all()) and bool((g != 0).any()), path


def test_a_latent_of_one_needs_no_off_diagonal_layer():
    head = flows.full_init(torch.Generator().manual_seed(5), 3, 1)
    assert set(head) == {"mean", "logvar"}
    z, log_q = flows.full_sample(head, torch.randn(3), torch.randn(1))
    assert z.shape == (1,) and log_q.shape == ()


@pytest.mark.parametrize("kind", ["full", "iaf"])
def test_the_batched_draw_compiles_without_graph_breaks(kind):
    gen = torch.Generator().manual_seed(6)
    head = flows.full_init(gen, 6, 4) if kind == "full" else flows.iaf_init(gen, 6, 4, 3, 5)
    fn = vmap(flows.full_sample if kind == "full" else flows.iaf_sample, in_dims=(None, 0, 0))
    h, eps = torch.randn(8, 6, generator=gen), torch.randn(8, 4, generator=gen)
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(head, h, eps), fn(head, h, eps))
