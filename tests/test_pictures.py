"""Pictures: each function writes a PNG of the expected grid, scaled up under a title beside its row labels, the
same for the same seed."""

import numpy as np
import pytest
import torch
from PIL import Image

import funcvae
from funcvae import pictures

MODELS = {
    "mlp-bernoulli": dict(hidden=(32,), latent=5),
    "mlp-gaussian": dict(hidden=(32,), latent=5, likelihood="gaussian", obs_std=0.2),
    "mlp-gaussian-learned": dict(hidden=(32,), latent=5, likelihood="gaussian"),
    "conv-bernoulli": dict(arch="conv", channels=(4, 8), hidden=(16,), latent=3),
    "mlp-vamp": dict(hidden=(32,), latent=5, prior="vamp", pseudo_inputs=4),
}
CELL = 28 + pictures.PADDING  # one image and its border
S = pictures.SCALE
TITLE = 26  # the title band's height, in screen pixels


def grid_size(rows, cols):
    """(width, height) in image pixels of make_grid's grid of 28 x 28 images."""
    return pictures.PADDING + cols * CELL, pictures.PADDING + rows * CELL


def picture(path):
    """The PNG as (height, width) grey levels in [0, 1], as drawn."""
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("L"))).float() / 255


def grid_of(path, rows, cols):
    """The grid of ``rows`` x ``cols`` images in the picture's bottom-right corner, one value per image pixel
    (each drawn as S x S equal screen pixels, which is checked)."""
    width, height = grid_size(rows, cols)
    drawn = picture(path)[-S * height:, -S * width:]
    assert drawn.shape == (S * height, S * width)
    blocks = drawn.reshape(height, S, width, S)
    assert bool((blocks == blocks[:, :1, :, :1]).all())  # every image pixel is an S x S block
    return blocks[:, 0, :, 0]


def fits(path, rows, cols):
    """Whether the picture is the grid of ``rows`` x ``cols`` images under the title band, beside its row labels
    (at most 150 screen pixels wide), with the grid's white border."""
    grid = grid_of(path, rows, cols)
    with Image.open(path) as image:
        width, height = image.size
    border = torch.cat([grid[:pictures.PADDING].flatten(), grid[:, :pictures.PADDING].flatten()])
    return height == TITLE + S * grid.shape[0] and 0 <= width - S * grid.shape[1] <= 150 and bool((border == 1).all())


def size(path):
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def images(fashion):
    return fashion[1][:6]


@pytest.mark.parametrize("model", MODELS)
def test_every_picture_has_its_grid_size(model, images, tmp_path):
    params = funcvae.init(seed=0, **MODELS[model])
    assert fits(pictures.reconstructions(params, images, tmp_path / "recon.png"), 2, 6)
    assert fits(pictures.prior_samples(params, tmp_path / "prior.png", n=10, nrow=4, seed=0), 3, 4)
    assert fits(pictures.interpolations(params, images[:2], images[2:4], tmp_path / "lerp.png", steps=5), 2, 5)
    rows = min(4, params.model.latent)
    assert fits(pictures.traversal(params, images, tmp_path / "walk.png", dims=4, steps=7), rows, 7)


def test_same_seed_same_picture_other_seed_other_picture(tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    paths = [pictures.prior_samples(params, tmp_path / f"{i}.png", n=8, seed=s) for i, s in enumerate((3, 3, 4))]
    a, b, c = (p.read_bytes() for p in paths)
    assert a == b and a != c


def cells(pixels, rows, cols):
    """The (rows * cols, 28, 28) images of a save_image grid, row by row."""
    pad = pictures.PADDING
    return torch.stack([pixels[pad + r * CELL:pad + r * CELL + 28, pad + c * CELL:pad + c * CELL + 28]
                        for r in range(rows) for c in range(cols)])


def test_prior_samples_of_a_vamp_prior_come_from_its_mixture(images, tmp_path):
    # A VampPrior whose 3 components sit far apart with posterior stds of 3e-7: every draw from the mixture
    # is (to far below a grey level) one of the 3 component means, unlike a draw from N(0, I).
    params = funcvae.init(seed=0, hidden=(32,), latent=5, prior="vamp", pseudo_inputs=3)
    enc = dict(params.tree["encoder"])
    enc["mean"] = {k: 30 * t for k, t in enc["mean"].items()}
    enc["logvar"] = {"kernel": torch.zeros_like(enc["logvar"]["kernel"]),
                     "bias": torch.full_like(enc["logvar"]["bias"], -30.0)}
    params = funcvae.Params(params.model, {**params.tree, "encoder": enc,
                                           "prior": {"pseudo_inputs": images[:3].reshape(3, -1).clone()}})
    mean, _ = funcvae.encode(params, images[:3])
    components = torch.sigmoid(funcvae.decode(params, mean)).reshape(3, 28, 28)
    apart = (components[:, None] - components[None]).abs().amax((-1, -2))
    assert float((apart + 255 * torch.eye(3)).min()) > 20 / 255  # the components are told apart easily

    path = pictures.prior_samples(params, tmp_path / "vamp.png", n=30, nrow=6, seed=0)
    assert fits(path, 5, 6)
    drawn = cells(grid_of(path, 5, 6), 5, 6)
    distance = (drawn[:, None] - components[None]).abs().amax((-1, -2))  # (30, 3)
    assert bool((distance.min(1).values <= 1 / 255 + 1e-6).all())  # each sample is a component, up to 8 bits
    assert len(set(distance.argmin(1).tolist())) >= 2  # and more than one component is drawn
    # Draws from N(0, I) instead would be none of them.
    standard = torch.sigmoid(funcvae.decode(params, torch.randn(30, 5, generator=torch.Generator().manual_seed(0))))
    far = (standard.reshape(30, 1, 28, 28) - components[None]).abs().amax((-1, -2))
    assert bool((far.min(1).values > 10 / 255).all())


def test_reconstructions_show_the_inputs_and_the_decoded_means(images, tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    path = pictures.reconstructions(params, images[:1], tmp_path / "one.png")
    pixels = grid_of(path, 2, 1)
    top = pixels[2:30, 2:30]
    torch.testing.assert_close(top, images[0, 0], atol=1 / 255, rtol=0)  # PNG holds 8-bit levels
    mean, _ = funcvae.encode(params, images[:1])
    bottom = torch.sigmoid(funcvae.decode(params, mean)).reshape(28, 28)
    torch.testing.assert_close(pixels[32:60, 2:30], bottom, atol=1 / 255, rtol=0)


def test_traversal_rows_follow_the_most_variable_dims(images, tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    path = pictures.traversal(params, images, tmp_path / "w.png", dims=2, steps=3, span=2.0)
    assert fits(path, 2, 3)
    pixels = grid_of(path, 2, 3)
    # Row 0, column 0: the mean code with the most variable dim set to -span.
    mean, _ = funcvae.encode(params, images)
    top = int(torch.argmax(mean.var(0, correction=0)))
    z = mean.mean(0).clone()
    z[top] = -2.0
    expected = torch.sigmoid(funcvae.decode(params, z[None])).reshape(28, 28)
    torch.testing.assert_close(pixels[2:30, 2:30], expected, atol=1 / 255, rtol=0)


def test_traversal_rows_can_name_what_each_dim_encodes(images, tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    plain = pictures.traversal(params, images, tmp_path / "plain.png", dims=2, steps=3)
    named = pictures.traversal(params, images, tmp_path / "named.png", dims=2, steps=3,
                               names=["shape", "scale", "orientation", "x", "y"])
    assert fits(named, 2, 3) and size(named)[0] > size(plain)[0]  # the same grid beside longer labels
    torch.testing.assert_close(grid_of(named, 2, 3), grid_of(plain, 2, 3), atol=0, rtol=0)
    with pytest.raises(ValueError, match="one label per latent dim \\(5\\), got 2"):
        pictures.traversal(params, images, tmp_path / "bad.png", names=["x", "y"])


def test_interpolations_need_pairs(images, tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    with pytest.raises(ValueError, match="as many examples"):
        pictures.interpolations(params, images[:2], images[:3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        pictures.interpolations(params, images[:2], images[2:4], tmp_path / "x.png", steps=1)


def test_loss_curves_plot_train_and_held_out(tmp_path):
    history = [{"epoch": e, "recon": 300.0 - e, "kl": 10.0 + e, "loss": 310.0, "val_recon": 305.0 - e,
                "val_kl": 10.0 + e, "val_loss": 315.0, "beta": 1.0, "seconds": 1.0} for e in range(1, 6)]
    path = pictures.loss_curves(history, tmp_path / "sub" / "curves.png", dpi=50)
    assert path.is_file() and size(path) == (12 * 50, int(3.5 * 50))
    no_val = [{**h, "val_recon": None, "val_kl": None, "val_loss": None} for h in history]
    assert size(pictures.loss_curves(no_val, tmp_path / "train_only.png", dpi=50)) == (600, 175)
    with pytest.raises(ValueError, match="empty"):
        pictures.loss_curves([], tmp_path / "none.png")


def test_a_grid_is_scaled_up_under_its_title_beside_its_row_labels(images, tmp_path):
    params = funcvae.init(seed=0, hidden=(32,), latent=5)
    path = pictures.reconstructions(params, images[:3], tmp_path / "r.png")
    drawn, grid = picture(path), grid_of(path, 2, 3)  # grid_of checks each image pixel is S x S screen pixels
    assert S >= 3
    width = drawn.shape[1] - S * grid.shape[1]
    assert bool((drawn[:TITLE] < 0.5).any())  # the title's text
    for row in range(2):  # each row's label, left of it
        top = TITLE + S * (pictures.PADDING + row * CELL)
        assert bool((drawn[top:top + S * 28, :width] < 0.5).any())
    untitled = pictures.save_grid(torch.ones(2, 1, 28, 28), tmp_path / "plain.png", nrow=2)
    assert size(untitled) == tuple(S * n for n in grid_size(1, 2))
