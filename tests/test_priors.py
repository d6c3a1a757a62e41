"""Priors: the standard normal against torch.distributions; the VampPrior's density against a brute-force
mixture, its samples against the mixture's moments, and its pseudo-inputs trained by fit."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

import funcvae
from funcvae import objectives, priors
from funcvae.model import LOGVAR_RANGE, PRIOR_KEY, Params

K, LATENT = 7, 3


def vamp_params(spread: float = 1.0) -> Params:
    """A tiny VampPrior model; ``spread`` scales the encoder's mean head and the pseudo-inputs are drawn
    uniformly, so the K components are well apart (at their initialisation they nearly coincide)."""
    params = funcvae.init(seed=0, hidden=(16,), latent=LATENT, prior="vamp", pseudo_inputs=K)
    if spread == 1.0:
        return params
    tree = {**params.tree, "encoder": {**params.tree["encoder"], "mean": {
        name: t * spread for name, t in params.tree["encoder"]["mean"].items()}}}
    tree[PRIOR_KEY] = {"pseudo_inputs": torch.rand(K, 784, generator=torch.Generator().manual_seed(5))}
    return Params(params.model, tree)


def brute_force_components(params: Params):
    """Each pseudo-input encoded on its own, by the user-level encoder (logvar clamped as encode_one does)."""
    model, tree = params.model, params.tree
    pairs = [model.encode(tree, u) for u in tree[PRIOR_KEY]["pseudo_inputs"]]
    mean = torch.stack([m for m, _ in pairs])
    logvar = torch.stack([lv for _, lv in pairs]).clamp(*LOGVAR_RANGE)
    return mean, logvar


def mixture(mean, logvar):
    return MixtureSameFamily(Categorical(logits=torch.zeros(mean.shape[0])),
                             Independent(Normal(mean, torch.exp(0.5 * logvar)), 1))


def test_standard_normal_kl_dims_is_torch_kl_per_dimension():
    prior, g = priors.standard_normal(), torch.Generator().manual_seed(0)
    mean = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(5, 4, generator=g, dtype=torch.float64) * 2
    expected = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    got = prior.kl_dims(None, None, mean, logvar)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    one = prior.kl_dims(None, None, mean[0], logvar[0])  # ONE example: (latent,)
    torch.testing.assert_close(one, expected[0], rtol=1e-12, atol=1e-12)


def test_standard_normal_log_prob_and_sample():
    prior = priors.standard_normal()
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    torch.testing.assert_close(prior.log_prob(None, None, z), Normal(0.0, 1.0).log_prob(z).sum(-1),
                               rtol=1e-12, atol=1e-12)
    model = funcvae.models.mlp(hidden=(16,), latent=LATENT)
    like = torch.zeros((), dtype=torch.float64)
    draws = prior.sample(None, model, 20000, torch.Generator().manual_seed(2), like)
    assert draws.shape == (20000, LATENT) and draws.dtype == torch.float64
    assert torch.all(draws.mean(0).abs() < 5 / math.sqrt(20000))
    assert torch.all((draws.var(0) - 1).abs() < 5 * math.sqrt(2 / 20000))
    assert prior.factorised and prior.init(torch.Generator(), model) is None
    assert PRIOR_KEY not in funcvae.init(seed=0, hidden=(16,), latent=LATENT).tree


@pytest.mark.parametrize("spread", [1.0, 8.0])
def test_vamp_log_prob_is_brute_force_logsumexp_over_the_pseudo_inputs(spread):
    params = vamp_params(spread)
    model, tree, prior = params.model, params.tree, params.model.prior
    assert isinstance(prior, priors.VampPrior) and prior.components == K
    mean, logvar = brute_force_components(params)
    z = torch.randn(10, LATENT, generator=torch.Generator().manual_seed(3)) * 2
    by_hand = torch.stack([
        torch.logsumexp(torch.stack([Normal(mean[k], torch.exp(0.5 * logvar[k])).log_prob(zi).sum() for k in range(K)]),
                        0) - math.log(K) for zi in z])
    got = torch.stack([prior.log_prob(tree, model, zi) for zi in z])
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, mixture(mean, logvar).log_prob(z), rtol=1e-5, atol=1e-5)
    batched = torch.func.vmap(lambda zi: prior.log_prob(tree, model, zi))(z)  # how objectives call it
    torch.testing.assert_close(batched, got, rtol=1e-6, atol=1e-5)


def test_vamp_samples_have_the_mixtures_mean_and_variance():
    params = vamp_params(spread=8.0)
    model, tree, prior = params.model, params.tree, params.model.prior
    mean, logvar = brute_force_components(params)
    assert (mean.max(0).values - mean.min(0).values).min() > 1.0  # the components are apart: a real test
    n = 40000
    draws = prior.sample(tree, model, n, torch.Generator().manual_seed(4), torch.zeros(()))
    assert draws.shape == (n, LATENT) and draws.dtype == torch.float32
    mix_mean = mean.mean(0)
    mix_var = (torch.exp(logvar) + mean**2).mean(0) - mix_mean**2
    centred = draws - draws.mean(0)
    fourth = (centred**4).mean(0)
    # Standard errors: of a mean, sqrt(var / n); of a sample variance, sqrt((m4 - var^2) / n).
    assert torch.all((draws.mean(0) - mix_mean).abs() < 5 * torch.sqrt(mix_var / n))
    assert torch.all((draws.var(0) - mix_var).abs() < 5 * torch.sqrt((fourth - mix_var**2) / n))
    # Every component is drawn, about equally often: each draw's nearest component mean picks it.
    nearest = torch.cdist(draws, mean).argmin(1)
    assert nearest.unique().numel() == K


def test_vamp_has_no_per_dimension_kl_and_is_not_factorised():
    params = vamp_params()
    prior = params.model.prior
    mean, logvar = torch.zeros(LATENT), torch.zeros(LATENT)
    assert prior.kl_dims(params.tree, params.model, mean, logvar) is None
    assert not prior.factorised
    with pytest.raises(ValueError):
        objectives.check(objectives.elbo(kl="analytic"), params.model)


def test_vamp_init_and_pseudo_inputs_get_gradients():
    params = vamp_params()
    u = params.tree[PRIOR_KEY]["pseudo_inputs"]
    assert u.shape == (K, 784)
    # N(0.05, 0.01^2) pixels, the paper's initialisation (SE of the mean of 5488 draws: 0.01 / 74).
    assert abs(float(u.mean()) - 0.05) < 5 * 0.01 / math.sqrt(u.numel())
    assert abs(float(u.std()) - 0.01) < 5 * 0.01 / math.sqrt(2 * u.numel())
    assert torch.equal(u, funcvae.init(seed=0, hidden=(16,), latent=LATENT, prior="vamp",
                                       pseudo_inputs=K).tree[PRIOR_KEY]["pseudo_inputs"])
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(6))
    eps = torch.randn(8, 1, LATENT, generator=torch.Generator().manual_seed(7))
    grads, _ = objectives.loss_and_grad(params, x, eps)
    assert grads.tree[PRIOR_KEY]["pseudo_inputs"].abs().sum() > 0


def test_fit_trains_the_pseudo_inputs():
    params = vamp_params()
    x = torch.rand(128, 784, generator=torch.Generator().manual_seed(8))
    trained, history = funcvae.fit(params, x, epochs=1, batch_size=32, compile=False, lr=1e-2)
    before, after = params.tree[PRIOR_KEY]["pseudo_inputs"], trained.tree[PRIOR_KEY]["pseudo_inputs"]
    assert after.shape == before.shape and torch.isfinite(after).all()
    # Adam moves every element that has a gradient by about lr on its first step.
    assert (after - before).abs().mean() > 1e-3
    assert history[0]["skipped"] == 0


@pytest.mark.parametrize("prior", [priors.standard_normal(), priors.vamp(7), priors.vamp()])
def test_get_round_trips_to_dict(prior):
    back = priors.get(prior.to_dict())
    assert back == prior and hash(back) == hash(prior)
    assert priors.get(prior) is prior and priors.get(prior.name) == type(prior)()


@pytest.mark.parametrize("bad", ["laplace", {"name": "vamp", "components": 0}, {"name": "vamp", "k": 3}, 0,
                                 {"name": "vamp", "components": 2.5}])
def test_bad_priors_are_refused(bad):
    with pytest.raises(ValueError):
        priors.get(bad)
