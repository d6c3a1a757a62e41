"""Per-example gradients by vmap(grad): they average to the batch gradient; SNR and DP-SGD built on them."""

import math

import optree
import pytest
import torch

import funcvae
from funcvae import optim
from funcvae.objectives import loss_and_grad
from funcvae.per_example import example_grads


def clipped_noisy_mean(grads, weights, clip_norm, noise_multiplier, noise):
    """DP-SGD's aggregate of per-example ``grads`` (leaves (B, ...)) with standard normal ``noise``."""
    dp = optim.differentially_private_aggregate(clip_norm, noise_multiplier)
    state = dp.init(noise)
    mean, new_state = dp.update(grads, state, None, weights=weights, noise=noise)
    assert new_state is state  # its only state is its numbers
    return mean


@pytest.mark.parametrize("model", [dict(hidden=(32,), latent=4), dict(arch="conv", channels=(4, 8), hidden=(), latent=3)])
def test_the_mean_of_per_example_gradients_is_the_batch_gradient(model):
    params = funcvae.init(seed=0, **model)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.rand(12, 784, generator=g), torch.randn(12, 1, params.model.latent, generator=g)
    per_example, terms = example_grads(params, x, eps, 1.0)
    batch, (loss, _) = loss_and_grad(params, x, eps)
    batch = funcvae.leaves_by_path(batch)
    for path, a in funcvae.leaves_by_path(funcvae.Params(params.model, per_example)).items():
        torch.testing.assert_close(a.mean(0), batch[path], msg=path)
    torch.testing.assert_close(terms["loss"].mean(), loss)


def test_per_example_grads_equal_a_loop_of_single_example_gradients():
    params = funcvae.init(seed=1, hidden=(16,), latent=2)
    x = torch.rand(5, 784, generator=torch.Generator().manual_seed(1))
    grads = funcvae.per_example_grads(params, x, seed=3, compile=False)
    eps = torch.randn(5, 1, 2, generator=funcvae.rng.generator(3, "per-example"))
    for i in range(5):
        one, _ = loss_and_grad(params, x[i:i + 1], eps[i:i + 1])
        for path, t in funcvae.leaves_by_path(one).items():
            torch.testing.assert_close(funcvae.leaves_by_path(grads)[path][i], t, msg=path)


def test_compiled_per_example_grads_equal_eager():
    params = funcvae.init(seed=1, hidden=(16,), latent=2)
    x = torch.rand(8, 784, generator=torch.Generator().manual_seed(2))
    eager = funcvae.leaves_by_path(funcvae.per_example_grads(params, x, seed=0, compile=False))
    compiled = funcvae.leaves_by_path(funcvae.per_example_grads(params, x, seed=0, compile="aot_eager"))
    for path in eager:
        torch.testing.assert_close(compiled[path], eager[path], msg=path)


def test_gradient_snr_matches_its_definition_and_does_not_depend_on_chunks():
    params = funcvae.init(seed=2, hidden=(16,), latent=2)
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(3))
    snr = funcvae.gradient_snr(params, x, seed=5, chunk_size=40, compile=False)
    assert snr == pytest.approx(funcvae.gradient_snr(params, x, seed=5, chunk_size=40, compile=False))
    eps = torch.randn(40, 1, 2, generator=funcvae.rng.generator(5, "snr"))
    grads, _ = example_grads(params, x, eps, 1.0)
    for path, g in funcvae.leaves_by_path(funcvae.Params(params.model, grads)).items():
        want = float((g.mean(0).abs() / (g.std(0) + 1e-12)).mean())
        assert snr[path] == pytest.approx(want, rel=1e-3), path
    chunked = funcvae.gradient_snr(params, x, seed=5, chunk_size=7, compile=False)
    assert set(chunked) == set(snr) and all(math.isfinite(v) and v >= 0 for v in chunked.values())


def test_clipping_bounds_each_example_and_leaves_small_gradients_alone():
    g = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(6, 3, generator=g) * 10, "b": torch.randn(6, 2, 2, generator=g) * 10}
    grads["a"][0], grads["b"][0] = 1e-3, 1e-3  # example 0 is tiny: unclipped
    weights = torch.tensor([1.0, 1, 1, 1, 1, 0])  # the last row is padding
    zero = optree.tree_map(lambda t: torch.zeros_like(t[0]), grads)
    mean = clipped_noisy_mean(grads, weights, 1.0, 1.0, zero)
    norms = torch.sqrt(grads["a"].pow(2).sum(1) + grads["b"].flatten(1).pow(2).sum(1))
    scale = torch.clamp(1.0 / norms, max=1.0) * weights
    for name, t in grads.items():
        want = (t * scale.view(-1, *([1] * (t.ndim - 1)))).sum(0) / 5
        torch.testing.assert_close(mean[name], want)
    # The noise is standard normal, scaled inside by noise_multiplier * clip_norm, then divided by the rows.
    noise = optree.tree_map(torch.ones_like, zero)
    noisy = clipped_noisy_mean(grads, weights, 1.0, 1.0, noise)
    for name in grads:
        torch.testing.assert_close(noisy[name], mean[name] + 1 / 5)
    louder = clipped_noisy_mean(grads, weights, 1.0, 3.0, noise)
    for name in grads:
        torch.testing.assert_close(louder[name], mean[name] + 3 / 5)
    quiet = clipped_noisy_mean(grads, weights, 1.0, 0.0, noise)
    for name in grads:
        torch.testing.assert_close(quiet[name], mean[name])
    # A larger clipping norm clips less and scales the noise with it: the clipped sum here is unchanged
    # for the tiny example 0 and ``clip`` times larger for the others (all far above both norms).
    wide = clipped_noisy_mean(grads, weights, 2.0, 1.0, noise)
    for name, t in grads.items():
        want = (t * (torch.clamp(2.0 / norms, max=1.0) * weights).view(-1, *([1] * (t.ndim - 1)))).sum(0) / 5
        torch.testing.assert_close(wide[name], want + 2 / 5)


def test_fit_with_clipping_trains_and_is_deterministic(fashion):
    train, test = fashion
    params = funcvae.init(seed=0, hidden=(64,), latent=8)
    runs = [funcvae.fit(params, train[:512], epochs=2, batch_size=64, clip_norm=50.0, noise_multiplier=0.5,
                        val_data=test[:200], compile=False) for _ in range(2)]
    (a, ha), (b, _) = runs
    for path, leaf in funcvae.leaves_by_path(a).items():
        assert torch.equal(leaf, funcvae.leaves_by_path(b)[path]), path
    assert ha[-1]["val_loss"] < funcvae.elbo(params, test[:200], seed=0)["loss"].mean()


def test_clipping_settings_are_checked():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    x = torch.rand(8, 784)
    with pytest.raises(ValueError, match="noise_multiplier needs clip_norm"):
        funcvae.fit(params, x, epochs=1, batch_size=4, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0"):
        funcvae.fit(params, x, epochs=1, batch_size=4, clip_norm=0.0)
    with pytest.raises(ValueError, match="not a stack"):
        funcvae.fit(funcvae.stack([params, params]), x, epochs=1, batch_size=4, clip_norm=1.0)
