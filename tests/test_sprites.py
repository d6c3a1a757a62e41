"""The dSprites-like set (``funcvae.data.shapes``, ``funcvae.sprites``): shapes, dtypes and factor ranges; every
grid point once; a fixed train/test partition; the same bytes every time (pinned by SHA-256); each factor moves,
grows, turns or changes the sprite as it should, exactly where the translation is whole pixels; the pixels
agree with the outline drawn directly in the frame, and no pixel centre is near enough an outline for rounding
to flip it; bad arguments refused; ``data.load("shapes", ...)`` and ``train --dataset shapes`` with eval and
sample."""

import hashlib
import json

import pytest
import torch

import funcvae
import funcvae.cli
from funcvae import sprites, synthetic
from funcvae.cli import factors

#: Each point's index in the full grid, y fastest: factors @ FLAT.
FLAT = torch.tensor([6 * 40 * 32 * 32, 40 * 32 * 32, 32 * 32, 32, 1])
#: Every position at size 32, so x and y fall on both sub-pixel phases; fewer scales and orientations.
PHASES = dict(scale=2, orientation=4)
#: The bytes of small configurations (images, then factors): a change here changes the data set.
PINNED = {
    ("all", 64, (("scale", 2), ("orientation", 4), ("x", 2), ("y", 2))):
        "700df7d57bb890ea2a4e26cbeb99357f505f540374c91cf9875f2679e631e3b1",
    ("all", 32, (("scale", 2), ("orientation", 5), ("x", 32), ("y", 2))):
        "aef3844487dfa077cce909b58fdc333b842d634c312d08a40e531d938d6b4613",
}
#: The small grid's test split's factors: the partition a model is scored on.
TEST_SPLIT = "d0a16e58720513d26d0953d7cb4a3d3c6a7b5bf5922769f8ce4f492d9758e6a3"


def by_factor(images: torch.Tensor, grid) -> torch.Tensor:
    """``images`` of split "all" as (shape, scale, orientation, x, y, H, W)."""
    return images.view(*[len(v) for v in sprites.indices(grid).values()], *images.shape[-2:])


def centres_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(N, 2): x and y of the white pixels' mean, in pixels (pixel k's centre at k + 1/2)."""
    w = images[:, 0].double()
    at = torch.arange(images.shape[-1], dtype=torch.float64) + 0.5
    return torch.stack([(w.sum(1) * at).sum(1), (w.sum(2) * at).sum(1)], 1) / w.sum((1, 2))[:, None]


@pytest.fixture(scope="module")
def small():
    """The grid the CLI trains on, each split: {split: (images, factors)}."""
    return {split: funcvae.data.shapes(split, size=32, grid="small") for split in sprites.SPLITS}


def test_binary_uint8_images_and_int64_factors_indexing_the_full_grid(small):
    images, factors = small["all"]
    assert images.shape == (46_080, 1, 32, 32) and images.dtype == torch.uint8
    assert images.eq(0).logical_or(images.eq(255)).all() and images.eq(255).any()
    assert factors.shape == (46_080, 5) and factors.dtype == torch.int64
    assert sprites.FACTOR_NAMES == tuple(sprites.FACTORS) == ("shape", "scale", "orientation", "x", "y")
    assert sprites.FACTORS == {"shape": 3, "scale": 6, "orientation": 40, "x": 32, "y": 32}
    assert sprites.SCALES == (0.5, 0.6, 0.7, 0.8, 0.9, 1.0) and len(set(sprites.ORIENTATIONS)) == 40
    taken = sprites.indices("small")
    assert taken["x"].tolist() == taken["y"].tolist() == list(range(0, 32, 2))
    assert taken["orientation"].tolist() == list(range(0, 40, 4))
    for column, name in enumerate(sprites.FACTOR_NAMES):
        assert torch.equal(factors[:, column].unique(), taken[name])
    assert funcvae.data.shapes is sprites.shapes and funcvae.data.coloured_shapes is synthetic.shapes
    images, factors = funcvae.data.shapes("test", size=64, grid=dict(scale=2, orientation=2))  # others: all
    assert images.shape[1:] == (1, 64, 64) and factors.shape == (images.shape[0], 5)
    assert factors[:, 3].unique().numel() == 32


def test_all_holds_every_grid_point_once_in_factor_order(small):
    assert torch.equal(small["all"][1], torch.cartesian_prod(*sprites.indices("small").values()))
    assert torch.equal(sprites.points("all", "full") @ FLAT, torch.arange(737_280))
    assert torch.equal(sprites.points("all", dict(orientation=10, x=16, y=16)), small["all"][1])


def test_train_and_test_partition_every_grid_the_same_way(small):
    (train_x, train), (test_x, test), (all_x, every) = small["train"], small["test"], small["all"]
    assert (train.shape[0], test.shape[0]) == (41_401, 4_679)
    merged = torch.cat([train, test]) @ FLAT
    order = merged.argsort()
    assert torch.equal(merged[order], every @ FLAT)  # disjoint, and together the whole grid
    assert torch.equal(torch.cat([train_x, test_x])[order], all_x)
    assert (train @ FLAT).diff().gt(0).all() and (test @ FLAT).diff().gt(0).all()  # each in factor order
    full_test = sprites.points("test", "full") @ FLAT
    assert full_test.shape[0] == sprites.TEST == 73_728
    assert torch.isin(test @ FLAT, full_test).all() and not torch.isin(train @ FLAT, full_test).any()
    assert torch.equal(sprites.points("test", dict(orientation=10, x=16, y=16)), test)
    assert hashlib.sha256(test.numpy().tobytes()).hexdigest() == TEST_SPLIT


@pytest.mark.parametrize("key", list(PINNED))
def test_the_same_bytes_every_time(key):
    split, size, grid = key
    images, factors = funcvae.data.shapes(split, size=size, grid=dict(grid))
    again, same = funcvae.data.shapes(split, size=size, grid=dict(grid))
    assert torch.equal(images, again) and torch.equal(factors, same)
    assert hashlib.sha256(images.numpy().tobytes() + factors.numpy().tobytes()).hexdigest() == PINNED[key]


@pytest.mark.parametrize("size, grid", [(32, "small"), (64, dict(scale=2, orientation=2, x=32, y=32))])
def test_x_and_y_translate_the_sprite_by_whole_pixels(small, size, grid):
    images = small["all"][0] if grid == "small" else funcvae.data.shapes("all", size=size, grid=grid)[0]
    each = by_factor(images, grid)
    assert torch.equal(each[:, :, :, 1:], each[:, :, :, :-1].roll(1, -1))  # one x step right: one pixel
    assert torch.equal(each[:, :, :, :, 1:], each[:, :, :, :, :-1].roll(1, -2))  # one y step down
    com = centres_of_mass(images).view(*each.shape[:5], 2)
    assert com[:, :, :, 1:, :, 0].sub(com[:, :, :, :-1, :, 0]).sub(1).abs().max() < 1e-12
    assert com[:, :, :, :, 1:, 1].sub(com[:, :, :, :, :-1, 1]).sub(1).abs().max() < 1e-12
    # The centre of mass is where POSITIONS says, within the pixelation's error (the heart's is not symmetric).
    positions = torch.tensor(sprites.POSITIONS, dtype=torch.float64)[sprites.indices(grid)["x"]] * size
    assert (com[..., 0] - positions[:, None]).abs().max() < 0.3
    # Nothing is cut: every sprite lies inside the frame's border.
    assert images[..., 0, :].eq(0).all() and images[..., -1, :].eq(0).all()
    assert images[..., :, 0].eq(0).all() and images[..., :, -1].eq(0).all()


def test_half_pixel_steps_at_size_32_are_drawn_on_their_own_phase():
    grid = dict(PHASES, x=32, y=32)
    images = by_factor(funcvae.data.shapes("all", size=32, grid=grid)[0], grid)
    assert torch.equal(images[:, :, :, 2:], images[:, :, :, :-2].roll(1, -1))  # two steps: one pixel
    # A half step is no whole-pixel copy of its left neighbour: its sprite was drawn half a pixel over.
    odd, even = images[:, :, :, 1::2].flatten(-2), images[:, :, :, 0::2]
    assert odd.ne(even.flatten(-2)).any(-1).all() and odd.ne(even.roll(1, -1).flatten(-2)).any(-1).all()
    com = centres_of_mass(images.reshape(-1, 1, 32, 32)).view(*images.shape[:5], 2)
    assert (com[:, :, :, 1:, :, 0] - com[:, :, :, :-1, :, 0] - 0.5).abs().mean() < 0.1


def test_scale_grows_the_area_and_shape_changes_the_footprint():
    grid = dict(orientation=8, x=2, y=2)
    for size in (32, 64):
        area = by_factor(funcvae.data.shapes("all", size=size, grid=grid)[0], grid).gt(0).sum((-1, -2))
        growth = area[:, 1:] - area[:, :-1]
        assert growth.ge(0).all() and growth.sum(1).gt(0).all()  # never smaller; larger over the scales
        assert growth.gt(0).all() or size == 32  # at 64, strictly at every step
        assert area[1].lt(area[0]).all()  # the ellipse (semi-axes 1, 1/2) is smaller than the square (1, 1)
    each = by_factor(funcvae.data.shapes("all", size=32, grid=grid)[0], grid).flatten(-2)
    assert each.ne(each.roll(1, 0)).any(-1).all()  # every shape's footprint differs from the others'


def test_orientation_turns_the_heart_and_is_not_identifiable_for_square_and_ellipse():
    grid = dict(scale=2, x=1, y=1)
    for size in (32, 64):
        square, ellipse, heart = by_factor(funcvae.data.shapes("all", size=size, grid=grid)[0], grid)[:, :, :, 0, 0]
        assert torch.equal(square[:, :30], square[:, 10:]) and torch.equal(ellipse[:, :20], ellipse[:, 20:])
        assert not torch.equal(square[:, :5], square[:, 5:10]) and not torch.equal(ellipse[:, :10], ellipse[:, 10:20])
        assert len({bytes(image.numpy()) for image in heart[-1]}) == 40  # the larger heart: 40 distinct images
        # Lobes up at 0, then counter-clockwise as seen: the mass trails to the tip, down, right, up, left.
        x_skew, y_skew = skews(heart[-1, ::10, None]).T
        assert y_skew[0] > 0 and x_skew[1] > 0 and y_skew[2] < 0 and x_skew[3] < 0


def skews(images: torch.Tensor) -> torch.Tensor:
    """(N, 2): the third central moment of the white pixels' x and y, > 0 where the mass trails right or down."""
    w = images[:, 0].double()
    at = torch.arange(images.shape[-1], dtype=torch.float64) + 0.5
    out = []
    for mass in (w.sum(1), w.sum(2)):  # per column, per row
        p = mass / mass.sum(1, keepdim=True)
        out.append((p * (at - (p * at).sum(1, keepdim=True)) ** 3).sum(1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("size", sprites.SIZES)
def test_pixels_equal_the_outline_drawn_in_the_frame_and_no_centre_is_near_an_outline(size):
    grid = dict(PHASES, x=32, y=32) if size == 32 else dict(scale=2, orientation=5, x=16, y=16)
    images, factors = funcvae.data.shapes("all", size=size, grid=grid)
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:300]
    shape, scale, orientation, x, y = factors[chosen].T
    at = torch.arange(size, dtype=torch.float64) + 0.5
    unit = sprites._UNIT * size * torch.tensor(sprites.SCALES, dtype=torch.float64)[scale][:, None, None]
    dx = (at[None, None, :] - torch.tensor(sprites.POSITIONS, dtype=torch.float64)[x][:, None, None] * size) / unit
    dy = (torch.tensor(sprites.POSITIONS, dtype=torch.float64)[y][:, None, None] * size - at[None, :, None]) / unit
    angle = torch.tensor(sprites.ORIENTATIONS, dtype=torch.float64)[orientation][:, None, None]
    u, v = angle.cos() * dx + angle.sin() * dy, angle.cos() * dy - angle.sin() * dx
    inside = sprites._implicit(u, v)[shape, torch.arange(len(chosen))].le(0)
    assert torch.equal(images[chosen, 0], inside.to(torch.uint8) * 255)
    outline = sprites._outline(size)
    assert outline.abs().min() > 1e-7  # rounding moves these values by ~1e-15: it cannot flip a pixel
    wider = sprites._outline(size, size // 2 + 8)  # a box 4 pixels wider each way holds no more of any sprite
    assert torch.equal(wider.le(0).sum((-1, -2)), outline.le(0).sum((-1, -2)))


@pytest.mark.parametrize("bad, match", [
    (dict(split="val"), "split must be one of"), (dict(split=40), r"coloured_shapes\(n, size, seed\)"),
    (dict(size=28), "size must be one of"),
    (dict(size=32.0), "size must be an int"), (dict(size=True), "size must be an int"),
    (dict(grid="tiny"), "grid must be one of"), (dict(grid=16), "grid must be one of"),
    (dict(grid=dict(colour=2)), r"unknown factors \['colour'\]"), (dict(grid=dict(x=3)), r"grid\['x'\] must divide 32"),
    (dict(grid=dict(x=0)), r"grid\['x'\] must be an int >= 1"), (dict(grid=dict(x=64)), r"grid\['x'\] must divide"),
])
def test_bad_arguments_are_refused_before_any_work(bad, match):
    with pytest.raises(ValueError, match=match):
        funcvae.data.shapes(**{"size": 32, **bad})


def test_data_load_serves_the_small_grid_at_32_for_the_command_line(small):
    for split in ("train", "test"):
        images, factors = small[split]
        assert torch.equal(funcvae.data.load("shapes", split, pixels="uint8"), images)
        assert torch.equal(funcvae.data.labels("shapes", split), factors[:, 0])
    images = small["test"][0]
    assert torch.equal(funcvae.data.load("shapes", "test"), images.float() / 255)
    assert torch.equal(funcvae.data.load("shapes", "test", binarize="static", pixels="uint8"), images // 255)
    assert funcvae.data.INPUT_SHAPES["shapes"] == tuple(small["train"][0].shape[1:])
    with pytest.raises(ValueError, match="split must be one of"):
        funcvae.data.load("shapes", "all")


def test_train_eval_and_sample_on_shapes(tmp_path, capsys):
    tiny = ["--quiet", "--no-compile", "--hidden", "8", "--latent", "2", "--batch-size", "8192", "--epochs", "1"]
    assert funcvae.cli.main(["train", "--dataset", "shapes", "--out", str(tmp_path), *tiny]) == 0
    (run_dir,) = tmp_path.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == "shapes" and config["model"]["input_shape"] == [1, 32, 32]
    assert (config["n_train"], config["n_test"]) == (41_401, 4_679)
    assert funcvae.cli.main(["eval", str(run_dir), "--k", "2", "--n", "20", "--quiet"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["dataset"] == "shapes" and result["n"] == 20 and result["samples"] is None
    out = capsys.readouterr().out
    assert "none for shapes" in out
    # The disentanglement scores, on the whole grid the run's images came from, at eval's quick sizes.
    scored = result["disentanglement"]
    assert scored["factors"] == list(funcvae.sprites.FACTOR_NAMES) and scored["sizes"] == factors.QUICK
    assert "shapes set's whole factor grid (46,080 images" in scored["data"] and len(scored["dims"]) == 2
    assert f"MIG                 | {scored['mig']['mig']:.3f}" in out
    assert result["files"]["traversal"] is not None
    assert funcvae.cli.main(["sample", str(run_dir), "--n", "4"]) == 0
    assert (run_dir / "samples-seed0.png").is_file()
