"""Colour images: the coloured shapes generator, the built-in conv and MLP models on 3-channel inputs with the
discretised logistic likelihood (shapes, a tiny fit on generated images, checkpoints), and bits per dimension
in eval only where the likelihood is discrete."""

import math

import pytest
import torch

import funcvae
import funcvae.cli
from funcvae import inputs, likelihoods, synthetic
from funcvae.cli import evaluate
from funcvae.pixels import level_values, pixel_values

TINY = dict(hidden=(16,), latent=4, channels=(4, 8), likelihood="discretized_logistic")


def test_shapes_are_seeded_uint8_images_with_their_factors():
    images, factors = funcvae.data.coloured_shapes(40, size=32, seed=3)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.uint8
    assert set(factors) == set(synthetic.FACTORS)
    for name, count in synthetic.FACTORS.items():
        assert factors[name].shape == (40,) and factors[name].dtype == torch.int64
        assert 0 <= int(factors[name].min()) and int(factors[name].max()) < count
    again, same = funcvae.data.coloured_shapes(40, size=32, seed=3)
    assert torch.equal(images, again) and all(torch.equal(factors[k], same[k]) for k in factors)
    assert not torch.equal(images, funcvae.data.coloured_shapes(40, size=32, seed=4)[0])
    # Each image is its shape's colour on black: the brightest pixel is the colour itself, the corners black.
    colours = torch.tensor(synthetic.COLOURS, dtype=torch.uint8)[factors["colour"]]
    brightest = images.flatten(2).gather(2, images.int().sum(1).flatten(1).argmax(1)[:, None, None].expand(40, 3, 1))
    assert torch.equal(brightest[:, :, 0], colours)
    assert images[:, :, 0, 0].eq(0).all() and images[:, :, -1, -1].eq(0).all()
    assert funcvae.data.coloured_shapes(3, size=64)[0].shape == (3, 3, 64, 64)


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=True), dict(n=2, size=4), dict(n=2, seed=-1), dict(n=2.0)])
def test_shapes_refuses_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(k for k in ("size", "seed", "n") if k in bad))):
        funcvae.data.coloured_shapes(**bad)


@pytest.mark.parametrize("arch, shape", [("conv", (3, 32, 32)), ("conv", (3, 64, 64)), ("mlp", (3, 32, 32)),
                                         ("conv", (1, 28, 28))])
def test_built_in_models_take_colour_images_and_the_discretized_logistic(arch, shape):
    params = funcvae.init(seed=0, arch=arch, input_shape=shape, **TINY)
    features = math.prod(shape)
    assert params.model.likelihood == likelihoods.discretized_logistic()
    mean, log_scale = params.model.decode(params.tree, torch.zeros(4))
    assert mean.shape == log_scale.shape == (features,)
    x = funcvae.data.coloured_shapes(3, size=shape[1])[0][:, :shape[0]].float() / 255
    terms = funcvae.elbo(params, x, seed=0)
    assert terms["loss"].shape == (3,) and torch.isfinite(terms["loss"]).all()
    images = funcvae.sample(params, 2, seed=0)
    assert images.shape == (2, *shape) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("shape, channels, factor", [((3, 30, 30), (4, 8), 4), ((3, 28, 28), (4, 8, 16), 8)])
def test_conv_refuses_sizes_its_strides_do_not_divide(shape, channels, factor):
    with pytest.raises(ValueError, match=rf"needs height and width divisible by {factor}, got \({shape[1]}, "):
        funcvae.init(seed=0, arch="conv", input_shape=shape, **{**TINY, "channels": channels})


def test_non_levels_are_refused_before_any_work():
    params = funcvae.init(seed=0, arch="conv", input_shape=(3, 32, 32), **TINY)
    x = funcvae.data.coloured_shapes(4)[0].float() / 256  # the wrong 8-bit scale: only 0 of its values is a level k/255
    first = x.flatten(1)[0].nonzero()[0, 0]
    with pytest.raises(ValueError, match=rf"not 8-bit levels k/255 in \[0, 1\].*the first is "
                                         rf"{float(x.flatten(1)[0, first])}, at index \(0, {first}\)"):
        funcvae.fit(params, x, epochs=1, compile=False, progress=False)


@pytest.mark.parametrize("scale, levels", [(2, (0, 2)), (2, (0, 1, 2)), (1, (0, 1)), (1, (0, 7)), (100, (0, 5))])
def test_8_bit_levels_are_checked_on_the_values_they_stand_for(scale, levels):
    # The support (levels k/255) is no interval: under scale 2, level 1 (0.5) is refused and level 2 (1.0) is not.
    model = funcvae.init(seed=0, arch="mlp", input_shape=(1, 2, 2), **TINY).model
    x = torch.tensor(levels, dtype=torch.uint8)[torch.arange(8) % len(levels)].reshape(2, 4)
    like = torch.zeros(())

    def outcome(read):
        try:
            return read(x, model, scale=scale, like=like)
        except ValueError as e:
            return str(e)

    floats, held = outcome(inputs.as_examples), outcome(inputs.as_levels)
    if isinstance(floats, str):
        assert held == floats and "not 8-bit levels" in floats
    else:
        assert torch.equal(pixel_values(*held[:1], level_values(held[1], like.dtype)), floats)


def test_a_tiny_fit_on_coloured_shapes_lowers_the_loss(tmp_path):
    images = funcvae.data.coloured_shapes(160, size=16, seed=0)[0]
    params = funcvae.init(seed=0, arch="conv", input_shape=(3, 16, 16), **TINY)
    trained, history = funcvae.fit(params, images[:128], scale=255, val_data=images[128:], epochs=2,
                                   batch_size=32, lr=3e-3, compile=False, progress=False, checkpoint_dir=tmp_path)
    losses = [h["val_loss"] for h in history]
    assert losses[-1] < losses[0] and all(math.isfinite(v) for v in losses)
    # Checkpoints and params files of the likelihood restore the model and its params exactly.
    state = funcvae.load(tmp_path / funcvae.CHECKPOINT_FILE)
    assert state.model is trained.model and state.model.likelihood == likelihoods.discretized_logistic()
    assert all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(trained).values(),
                                                 funcvae.leaves_by_path(funcvae.Params(state.model,
                                                                                       state.train.tree)).values()))
    funcvae.save_params(tmp_path / "params.safetensors", trained)
    back = funcvae.load_params(tmp_path / "params.safetensors")
    assert back.model is trained.model
    held_out = images[128:].float() / 255
    assert torch.equal(funcvae.elbo(back, held_out, seed=1)["loss"], funcvae.elbo(trained, held_out, seed=1)["loss"])


def test_a_models_own_likelihood_is_recorded_and_checked_on_load(tmp_path):
    built_in = funcvae.models.mlp(input_shape=(3, 8, 8), hidden=(8,), latent=2, likelihood="discretized_logistic")
    model = funcvae.Model(init=built_in.init_fn, encode=built_in.encode, decode=built_in.decode,
                          likelihood="discretized_logistic", input_shape=(3, 8, 8), latent=2)
    params = model.init(seed=0)
    funcvae.save_params(tmp_path / "own.safetensors", params)
    assert funcvae.load_params(tmp_path / "own.safetensors", model=model).model is model
    other = funcvae.Model(init=built_in.init_fn, encode=built_in.encode, decode=built_in.decode,
                          likelihood="gaussian", input_shape=(3, 8, 8), latent=2)
    with pytest.raises(ValueError, match="likelihood"):
        funcvae.load_params(tmp_path / "own.safetensors", model=other)


@pytest.mark.parametrize("likelihood, discrete", [("discretized_logistic", True), ("gaussian", False)])
def test_eval_gives_bits_per_dim_only_for_a_discrete_likelihood(likelihood, discrete):
    params = funcvae.init(seed=0, arch="mlp", input_shape=(3, 8, 8), **{**TINY, "likelihood": likelihood})
    x = funcvae.data.coloured_shapes(16, size=8)[0].flatten(1).float() / 255
    history = [{"epoch": 1, "recon": 1.0, "kl": 1.0, "loss": 2.0, "val_recon": 1.0, "val_kl": 1.0, "val_loss": 2.0}]
    scores = evaluate._scores(params, x, history, k=2, seed=0)
    bits = scores["bits_per_dim"]
    assert bits["kl"] == pytest.approx(scores["kl"] / (192 * math.log(2)))
    for name in ("recon", "loss", "nll"):
        assert bits[name] == (pytest.approx(scores[name] / (192 * math.log(2))) if discrete else None), name


def test_the_command_line_offers_the_likelihood():
    assert "discretized_logistic" in funcvae.models.LIKELIHOODS
    args = funcvae.cli._parser().parse_args(["train", "--likelihood", "discretized_logistic", "--arch", "conv"])
    assert args.likelihood == "discretized_logistic"
