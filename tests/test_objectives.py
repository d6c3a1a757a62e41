"""Objectives: the Monte Carlo KL is unbiased for the analytic one, IWAE_1 is the ELBO, IWAE_k bounds the
k-sample ELBO and rises with k, free bits change only what is optimised, warm-up scales beta, and
loss_and_grad is plain autograd of the batch-mean loss."""

import math

import optree
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence
from torch.func import vmap

import funcvae
from funcvae import objectives as O
from funcvae import schedules
from funcvae.model import Params

LATENT = 3


def tiny(seed: int = 0, spread: bool = True, **fields) -> Params:
    """A tiny MLP VAE; ``spread``: its posteriors pushed away from N(0, I) (mean head x4, logvars lowered by
    1.5), so that KL terms are of order nats, not the hundredths of a fresh init."""
    params = funcvae.init(seed=seed, hidden=(16,), latent=LATENT, **fields)
    if not spread:
        return params
    enc = params.tree["encoder"]
    encoder = {**enc, "mean": {k: t * 4.0 for k, t in enc["mean"].items()},
               "logvar": {**enc["logvar"], "bias": enc["logvar"]["bias"] - 1.5}}
    return Params(params.model, {**params.tree, "encoder": encoder})


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def noise(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def hyper_of(objective, count=0, dtype=torch.float32):
    return objective.schedule(objective.init(), torch.tensor(count), dtype)


def terms_of(objective, params, x, eps, count=0):
    return O.batch_terms(params, x, eps, hyper_of(objective, count), objective)


def test_monte_carlo_kl_has_the_analytic_kl_as_its_expectation():
    params, x, draws = tiny(), images(8), 4000
    analytic = terms_of(O.elbo(kl="analytic"), params, x, noise(8, 1, LATENT))
    assert torch.all(analytic["kl"] > 1.0)  # nats, not hundredths: a real comparison
    eps = noise(draws * 8, 1, LATENT, seed=2)
    mc = terms_of(O.elbo(kl="mc"), params, x.repeat(draws, 1), eps)
    assert "kl_dims" not in mc and "kl_dims" in analytic
    kl = mc["kl"].reshape(draws, 8)
    se = kl.std(0) / math.sqrt(draws)
    assert torch.all((kl.mean(0) - analytic["kl"]).abs() < 5 * se), (kl.mean(0), analytic["kl"], se)
    # The same noise gives the same reconstruction term either way; the losses differ by the KL estimate only.
    same = terms_of(O.elbo(kl="analytic"), params, x.repeat(draws, 1), eps)
    assert torch.equal(same["recon"], mc["recon"])
    torch.testing.assert_close(mc["loss"] - same["loss"], mc["kl"] - same["kl"], rtol=0, atol=1e-3)


def test_auto_kl_is_analytic_for_the_standard_normal():
    params, x, eps = tiny(), images(6), noise(6, 1, LATENT)
    auto, analytic = terms_of(O.elbo(), params, x, eps), terms_of(O.elbo(kl="analytic"), params, x, eps)
    for name in ("recon", "kl", "kl_dims", "loss"):
        assert torch.equal(auto[name], analytic[name])
    torch.testing.assert_close(analytic["kl_dims"].sum(-1), analytic["kl"])


def test_iwae_with_one_sample_is_the_monte_carlo_elbo_exactly():
    params, x, eps = tiny(), images(16), noise(16, 1, LATENT)
    one, elbo = terms_of(O.iwae(1), params, x, eps), terms_of(O.elbo(kl="mc"), params, x, eps)
    for name in ("recon", "kl", "loss"):
        assert torch.equal(one[name], elbo[name]), name


@pytest.mark.parametrize("k", [2, 5, 20])
def test_iwae_loss_is_at_most_the_k_sample_elbo_for_every_example(k):
    params, x, eps = tiny(), images(32), noise(32, k, LATENT)
    iwae, elbo = terms_of(O.iwae(k), params, x, eps), terms_of(O.elbo(kl="mc", samples=k), params, x, eps)
    # iwae reports the k-sample ELBO's terms; its loss -log mean_j w_j <= -mean_j log w_j (Jensen).
    torch.testing.assert_close(iwae["recon"] + iwae["kl"], elbo["loss"], rtol=1e-6, atol=1e-4)
    assert torch.all(iwae["loss"] <= elbo["loss"] + 1e-4)
    assert torch.all(iwae["loss"] < elbo["loss"]).item()  # strictly, with spread log weights


def test_expected_iwae_bound_increases_with_k():
    params, x, draws = tiny(spread=False), images(32), 8
    means = {}
    for k in (1, 5, 50):
        bounds = torch.stack([-terms_of(O.iwae(k), params, x, noise(32, k, LATENT, seed=10 * k + r))["loss"]
                              for r in range(draws)])  # (draws, examples)
        means[k] = bounds.mean(1)  # independent draws of the batch's mean bound
    for small, large in ((1, 5), (5, 50)):
        diff = means[large].mean() - means[small].mean()
        se = math.sqrt((means[large].var() + means[small].var()) / draws)
        assert diff > 4 * se, (small, large, float(diff), se)


def test_free_bits_report_the_true_terms_and_reduce_to_the_floored_loss():
    params, x, eps = tiny(), images(12), noise(12, 1, LATENT)
    inner = O.elbo(beta=0.7)
    plain = terms_of(inner, params, x, eps)
    kl_dims = plain["kl_dims"][:9].mean(0)
    floor = float(kl_dims.median())  # some dimensions below the floor, some above
    assert (kl_dims < floor).any() and (kl_dims > floor).any()
    objective = O.free_bits(inner, floor)
    hyper = hyper_of(objective)
    assert all(v.dtype == torch.float32 for v in hyper.values())
    terms = O.batch_terms(params, x, eps, hyper, objective)
    for name in ("recon", "kl", "kl_dims", "loss"):
        assert torch.equal(terms[name], plain[name]), name
    weights = torch.tensor([1.0] * 9 + [0.0] * 3)  # three padding rows
    got = objective.reduce(terms, weights, weights.sum(), hyper)
    expected = terms["recon"][:9].mean() + 0.7 * torch.clamp(kl_dims, min=floor).sum()
    torch.testing.assert_close(got, expected)
    # A floor of zero is the plain ELBO (each dimension's KL is >= 0).
    zero = O.free_bits(inner, 0.0)
    torch.testing.assert_close(zero.reduce(terms, weights, weights.sum(), hyper_of(zero)),
                               inner.reduce(terms, weights, weights.sum(), hyper_of(inner)))


def test_free_bits_above_every_kl_leave_the_reconstruction_gradient():
    params, x, eps = tiny(), images(16), noise(16, 1, LATENT)
    floored, _ = O.loss_and_grad(params, x, eps, O.free_bits(O.elbo(), 1e6))
    recon_only, _ = O.loss_and_grad(params, x, eps, O.elbo(beta=0.0))
    full, _ = O.loss_and_grad(params, x, eps, O.elbo())
    trees = (funcvae.model.paths_and_leaves(g.tree) for g in (floored, recon_only, full))
    for (path, a), (_, b), (_, c) in zip(*trees):
        torch.testing.assert_close(a, b, msg=path)
        if path.startswith("encoder"):
            assert not torch.allclose(a, c), path  # the KL pulls on the encoder when not floored


def test_free_bits_and_analytic_kl_are_refused_where_they_cannot_work():
    with pytest.raises(ValueError, match="free bits"):
        O.free_bits(O.iwae(5), 0.5)
    with pytest.raises(ValueError):
        O.free_bits(O.elbo(), -1.0)
    vamp = funcvae.models.mlp(hidden=(16,), latent=LATENT, prior="vamp", pseudo_inputs=7)
    normal = funcvae.models.mlp(hidden=(16,), latent=LATENT)
    with pytest.raises(ValueError, match="Monte Carlo estimate"):  # a Gaussian model's floors need its analytic KL
        O.check(O.free_bits(O.elbo(kl="mc"), 0.5), normal)
    for objective in (O.free_bits(O.elbo(), 0.5), O.free_bits(O.elbo(kl="analytic"), 0.5), O.elbo(kl="analytic"),
                      O.elbo(beta=2.0, kl="analytic", warmup=schedules.warmup(3))):
        with pytest.raises(ValueError, match="closed-form"):
            O.check(objective, vamp)
        O.check(objective, normal)
    for objective in (O.elbo(), O.elbo(kl="mc"), O.iwae(5)):
        O.check(objective, vamp)
    with pytest.raises(TypeError):
        O.check("elbo", normal)
    # Past the check, the terms themselves refuse an analytic KL they do not have.
    params = tiny(spread=False, prior="vamp", pseudo_inputs=7)
    with pytest.raises(ValueError, match="closed-form"):
        terms_of(O.elbo(kl="analytic"), params, images(2), noise(2, 1, LATENT))


@pytest.mark.parametrize("beta, steps", [(1.0, 4), (2.5, 2.5), (0.3, 1)])
def test_warmup_multiplies_beta(beta, steps):
    objective = O.elbo(beta, warmup=schedules.warmup(steps))
    for count in (0, 1, 2, 3, 4, 10):
        hyper = objective.schedule(objective.init(), torch.tensor(count), torch.float32)
        assert hyper["beta"].dtype == torch.float32
        torch.testing.assert_close(hyper["beta"], torch.tensor(beta * min(1.0, (count + 1) / steps)))
    constant = O.elbo(beta)
    assert float(constant.schedule(constant.init(), torch.tensor(7), torch.float64)["beta"]) == beta
    # The loss uses the beta in force: recon + beta_t * kl.
    params, x, eps = tiny(), images(4), noise(4, 1, LATENT)
    terms = terms_of(objective, params, x, eps, count=0)
    torch.testing.assert_close(terms["loss"], terms["recon"] + beta * min(1.0, 1 / steps) * terms["kl"])


def test_loss_and_grad_is_plain_autograd_of_the_batch_mean_loss():
    params, x, eps = tiny(), images(6), noise(6, 1, LATENT)
    objective = O.elbo(beta=2.0, warmup=schedules.warmup(4))
    grads, (loss, terms) = O.loss_and_grad(params, x, eps, objective, count=1)  # beta 2 * 2/4 = 1
    assert isinstance(grads, Params) and grads.model is params.model
    assert terms["loss"].shape == (6,)
    tree = optree.tree_map(lambda t: t.detach().clone().requires_grad_(), params.tree)
    model = params.model

    def loss_of_one(i):  # written out: encode, reparameterise, decode, cross-entropy and torch's KL, beta 1
        mean, logvar = model.encode_one(tree, x[i])
        logits = model.decode_one(tree, mean + torch.exp(0.5 * logvar) * eps[i, 0])
        recon = F.binary_cross_entropy_with_logits(logits, x[i], reduction="sum")
        return recon + kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum()

    by_hand = torch.stack([loss_of_one(i) for i in range(6)]).mean()
    by_hand.backward()
    torch.testing.assert_close(loss, by_hand.detach())
    torch.testing.assert_close(loss, terms["loss"].mean())
    for (path, got), (_, want) in zip(funcvae.model.paths_and_leaves(grads.tree), funcvae.model.paths_and_leaves(tree)):
        torch.testing.assert_close(got, want.grad, msg=path, rtol=1e-5, atol=1e-6)
    # The default objective is the ELBO at beta 1.
    default, (default_loss, _) = O.loss_and_grad(params, x, eps)
    plain, (plain_loss, _) = O.loss_and_grad(params, x, eps, O.elbo())
    assert torch.equal(default_loss, plain_loss)


def test_loss_and_grad_reaches_every_leaf_of_a_vamp_model_and_an_iwae_objective():
    params, x = tiny(spread=False, prior="vamp", pseudo_inputs=7), images(6)
    for objective in (O.elbo(), O.iwae(4)):
        grads, (loss, _) = O.loss_and_grad(params, x, noise(6, objective.samples, LATENT), objective)
        assert torch.isfinite(loss)
        for path, g in funcvae.model.paths_and_leaves(grads.tree):
            assert torch.isfinite(g).all() and g.abs().sum() > 0, path


def test_objective_numbers_live_in_the_state_as_float64():
    for objective, expected in [(O.elbo(), {"beta": 1.0}), (O.elbo(0.25, kl="mc"), {"beta": 0.25}),
                                (O.free_bits(O.elbo(2.0), 0.5), {"beta": 2.0, "free_bits": 0.5}),
                                (O.iwae(3), {})]:
        state = objective.init()
        assert state.keys() == expected.keys()
        for name, value in expected.items():
            assert state[name].dtype == torch.float64 and state[name].ndim == 0 and float(state[name]) == value
        assert objective.init() is not state  # a fresh state each time
    # Objectives that differ only in their numbers share their functions (and so one compiled step).
    a, b = O.elbo(0.5, warmup=schedules.warmup(3)), O.elbo(2.0, warmup=schedules.warmup(3))
    assert (a.terms, a.reduce, a.schedule) == (b.terms, b.reduce, b.schedule)
    fa, fb = O.free_bits(a, 0.1), O.free_bits(b, 0.9)
    assert (fa.terms, fa.reduce, fa.schedule) == (fb.terms, fb.reduce, fb.schedule)


def test_a_stack_of_betas_is_vmap_over_the_stacked_state():
    params, x, eps = tiny(), images(5), noise(5, 1, LATENT)
    objectives = [O.free_bits(O.elbo(beta), floor) for beta, floor in ((0.5, 0.2), (2.0, 1.5))]
    state = optree.tree_map(lambda *t: torch.stack(t), *(o.init() for o in objectives))
    weights = torch.ones(5)

    def loss(state):
        hyper = objectives[0].schedule(state, torch.tensor(0), torch.float32)
        terms = O.batch_terms(params, x, eps, hyper, objectives[0])
        return objectives[0].reduce(terms, weights, weights.sum(), hyper)

    stacked = vmap(loss)(state)
    assert stacked.dtype == torch.float32  # every number of the state in the compute dtype, stacked or not
    for i, objective in enumerate(objectives):
        hyper = hyper_of(objective)
        alone = objective.reduce(terms_of(objective, params, x, eps), weights, weights.sum(), hyper)
        torch.testing.assert_close(stacked[i], alone)
    assert not torch.allclose(stacked[0], stacked[1])


@pytest.mark.parametrize("make", [lambda: O.elbo(-1.0), lambda: O.elbo(kl="exact"), lambda: O.elbo(samples=0),
                                  lambda: O.iwae(0), lambda: O.iwae(2.0)])
def test_bad_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_loss_and_grad_takes_images_as_they_come():
    params = funcvae.init(seed=0, hidden=(16,), latent=3)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(6, 1, 3, generator=torch.Generator().manual_seed(1))
    from_images = funcvae.loss_and_grad(params, images, eps)
    flat = funcvae.loss_and_grad(params, images.reshape(6, -1), eps)
    assert torch.equal(from_images[1][0], flat[1][0])
    for a, b in zip(funcvae.leaves_by_path(from_images[0]).values(), funcvae.leaves_by_path(flat[0]).values()):
        assert torch.equal(a, b)
