"""A dSprites-like image set with known factors (after Matthey et al., 2017), drawn on the spot.

Each image is one white shape on black, in binary pixels (0 or 255, uint8) as in dSprites, at every point of a
grid of five factors: shape (square, ellipse, heart), scale (6 values, 0.5 to 1), orientation (40 angles
2πk/40), and the x and y of the shape's centre (32 each). The full grid holds 3 x 6 x 40 x 32 x 32 = 737,280
images (3 GB at size 64); ``grid="small"`` keeps every 4th orientation and every 2nd x and y (46,080 images)
for runs on a CPU.

How it is drawn: each (shape, scale, orientation) sprite is rasterised once, in float64, a pixel being white when
its centre lies inside the shape; every position is then a whole-pixel translation of that sprite, so a step
of x or y moves the footprint by exactly the step. At size 64 a step is 1 pixel and the centres run from 16 to
47 pixels (``POSITIONS``: 0.25 to 0.73 of the width), so the largest sprite, turned any way, always fits. At
size 32 a step is half a pixel: each sprite is also drawn with its centre half a pixel over, and the small
grid's x and y (full-grid indices 0, 2, ..., 30) are whole pixels apart. x grows to the right, y downwards. At
every pixel centre the outline's implicit function is at least 1e-7 from 0 (a test checks it), where float64's
rounding of a sine or cosine moves it by about 1e-15: rounding cannot flip a pixel, so the same arguments give
the same bytes on every machine.

What differs from the original dSprites: the images are drawn here, not read from its file, so the exact pixel
footprints, the shapes' sizes and the positions' range differ; the heart is the implicit curve
(x² + y² - 1)³ - x²y³ <= 0, turned about its centre of mass; dSprites' 40 orientations are
linspace(0, 2π, 40), whose first and last are the same angle, where these are 40 distinct ones; the small grid
is this set's own. As in dSprites, orientation is not identifiable for the square (θ and θ + π/2 draw the same
square, to the very pixel wherever x and y share a sub-pixel phase: everywhere but in the full grid at size 32)
nor for the ellipse (θ and θ + π), only for the heart.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from funcvae.checks import check_int
from funcvae.rng import generator

#: The factors, in the order of the columns of ``shapes``' factors and of the grid (the last varies fastest).
FACTOR_NAMES = ("shape", "scale", "orientation", "x", "y")
SHAPES = ("square", "ellipse", "heart")
#: The shape's size, 0.5 to 1 (dSprites' linspace(0.5, 1, 6)): the square at scale s is 0.3 s of the width wide.
SCALES = tuple((5 + k) / 10 for k in range(6))
#: Radians, counter-clockwise as seen.
ORIENTATIONS = tuple(2 * math.pi * k / 40 for k in range(40))
#: The shape's centre as a share of the width (x, left to right) or height (y, top to bottom).
POSITIONS = tuple((16 + i) / 64 for i in range(32))
#: Each factor's name and number of values in the full grid; a factor is an index in [0, count).
FACTORS = dict(zip(FACTOR_NAMES, (len(SHAPES), len(SCALES), len(ORIENTATIONS), len(POSITIONS), len(POSITIONS))))
#: Each grid's number of values per factor; a count divides the factor's values, every (values / count)-th of
#: which the grid takes, starting at the first.
GRIDS = {"full": dict(FACTORS), "small": dict(shape=3, scale=6, orientation=10, x=16, y=16)}
SIZES = (32, 64)
SPLITS = ("train", "test", "all")
#: Points of the full grid held out as the "test" split (a tenth).
TEST = 73_728
_FULL = math.prod(FACTORS.values())
_UNIT = 0.15  # the square's half-side at scale 1, as a share of the width: no upright edge on pixel centres
_HEART_LIFT = 0.2935  # the heart curve's centre of mass lies this far above its origin


def shapes(split: str = "train", size: int = 64, grid: str | dict = "full") -> tuple[Tensor, Tensor]:
    """The images of a split of the grid, and their factors; the same arguments give the same bytes.

    Args:
      split: "all": every point of the grid, in factor order (``FACTOR_NAMES``, y fastest), what
        disentanglement measures sample from; "test": the grid's points among the full grid's ``TEST`` held out
        by a fixed seeded draw (about a tenth of any grid), "train" the others; both in factor order. A point
        is in the same split whatever the grid and size asked for.
      size: 64 (dSprites' size) or 32 (for runs on a CPU): height and width in pixels.
      grid: "full" (737,280 points), "small" (46,080) or a dict of counts per factor name, a missing one taking
        all its values (``GRIDS``).

    Returns:
      (images, factors): images (N, 1, size, size) uint8, 0 or 255; factors (N, 5) int64, each column an index
      into the FULL grid's values of its factor (``SCALES[factors[i, 1]]`` is image i's scale), so the small
      grid's x runs 0, 2, ..., 30; ``indices(grid)`` lists those a grid takes.
    """
    size = check_int("size", size)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    taken, kept = _split(split, grid)
    grid_points = torch.cartesian_prod(*taken.values())
    return _render(taken, size, kept), grid_points if kept is None else grid_points[kept]


def points(split: str, grid: str | dict = "full") -> Tensor:
    """The factors of ``shapes(split, grid=grid)``'s images, without drawing them: (N, 5) int64 full-grid
    indices, in factor order."""
    taken, kept = _split(split, grid)
    grid_points = torch.cartesian_prod(*taken.values())
    return grid_points if kept is None else grid_points[kept]


def indices(grid: str | dict = "full") -> dict[str, Tensor]:
    """The full-grid indices each factor takes in ``grid``: a dict of (count,) int64, keyed as ``FACTORS``."""
    counts = _counts(grid)
    return {name: torch.arange(counts[name]) * (total // counts[name]) for name, total in FACTORS.items()}


def _counts(grid) -> dict[str, int]:
    """The grid's count per factor, checked."""
    if isinstance(grid, str) and grid in GRIDS:
        return GRIDS[grid]
    if not isinstance(grid, dict):
        raise ValueError(f"grid must be one of {tuple(GRIDS)} or a dict of counts per factor, got {grid!r}")
    unknown = [name for name in grid if name not in FACTORS]
    if unknown:
        raise ValueError(f"grid names unknown factors {unknown}; the factors are {FACTOR_NAMES}")
    counts = {name: check_int(f"grid[{name!r}]", grid.get(name, total)) for name, total in FACTORS.items()}
    for name, count in counts.items():
        if FACTORS[name] % count:
            raise ValueError(f"grid[{name!r}] must divide {FACTORS[name]}, the factor's values, got {count}")
    return counts


def _split(split: str, grid) -> tuple[dict[str, Tensor], Tensor | None]:
    """The grid's ``indices``, checked, and which of its points, in factor order, the split keeps: (N,) bool, or
    None for all of them."""
    if split not in SPLITS:
        moved = " (coloured shapes of a seed: data.coloured_shapes(n, size, seed))" if type(split) is int else ""
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}{moved}")
    taken = indices(grid)
    if split == "all":
        return taken, None
    flat = torch.zeros((), dtype=torch.int64)
    for name, total in FACTORS.items():  # each point's index in the full grid, broadcast over the grid's axes
        flat = (flat * total)[..., None] + taken[name]
    held = _held_out()[flat.reshape(-1)]
    return taken, held if split == "test" else ~held


@functools.lru_cache(maxsize=1)
def _held_out() -> Tensor:
    """Which of the full grid's points are in the test split: (737280,) bool, ``TEST`` of them True."""
    held = torch.zeros(_FULL, dtype=torch.bool)
    held[torch.randperm(_FULL, generator=generator(0, "shapes", "split"))[:TEST]] = True
    return held


def _render(taken: dict[str, Tensor], size: int, kept: Tensor | None) -> Tensor:
    """The images of the grid's points (those ``kept``, (N,) bool, or all), drawn a shape at a time."""
    sprites = _outline(size).le(0).to(torch.uint8).mul_(255)
    sprites = sprites[taken["shape"]][:, taken["scale"]][:, :, taken["orientation"]].flatten(1, 2)
    n_shapes, kinds, nx, ny = len(taken["shape"]), sprites.shape[1], len(taken["x"]), len(taken["y"])
    block = kinds * nx * ny  # the images of one shape
    n = n_shapes * block if kept is None else int(kept.sum())
    images = (torch.zeros if kept is None else torch.empty)(n, 1, size, size, dtype=torch.uint8)
    start = 0
    for s in range(n_shapes):
        drawn = images[s * block:(s + 1) * block] if kept is None else torch.zeros(block, 1, size, size,
                                                                                   dtype=torch.uint8)
        _place(drawn.view(kinds, nx, ny, size, size), sprites[s], taken["x"].tolist(), taken["y"].tolist())
        if kept is not None:
            rows = kept[s * block:(s + 1) * block].nonzero().squeeze(1)
            torch.index_select(drawn, 0, rows, out=images[start:start + rows.shape[0]])
            start += rows.shape[0]
    return images


def _place(images: Tensor, sprites: Tensor, xs: list[int], ys: list[int]) -> None:
    """Copy each sprite (K, p, p, box, box) into ``images`` (K, nx, ny, size, size), contiguous zeros, at every
    position (full-grid indices ``xs`` and ``ys``). The boxes of one sub-pixel phase are evenly spaced, as their
    positions are: one strided view of ``images`` holds them all, and one copy fills it."""
    size, box = images.shape[-1], sprites.shape[-1]
    stride = images.stride()
    for px, i, mx, di, left, dleft in _runs(xs, size):
        for py, j, my, dj, top, dtop in _runs(ys, size):
            boxes = images.as_strided(
                (images.shape[0], mx, my, box, box),
                (stride[0], di * stride[1] + dleft, dj * stride[2] + dtop * size, size, 1),
                images.storage_offset() + i * stride[1] + j * stride[2] + top * size + left)
            boxes.copy_(sprites[:, px, py, None, None].expand_as(boxes))


def _runs(values: list[int], size: int) -> list[tuple[int, ...]]:
    """An axis's positions (evenly spaced full-grid indices) by sub-pixel phase: for each phase present,
    ``(phase, first, count, step, corner, corner step)``: the positions' indices in ``values``, and where their
    sprite boxes start, in pixels."""
    steps = 64 // size  # positions per pixel
    runs = []
    for phase in range(steps):
        members = [i for i, v in enumerate(values) if v % steps == phase]
        if members:
            corners = [(16 + values[i]) // steps - size // 4 for i in members[:2]]
            step, shift = (members[1] - members[0], corners[1] - corners[0]) if len(members) > 1 else (1, 0)
            runs.append((phase, members[0], len(members), step, corners[0], shift))
    return runs


@functools.lru_cache(maxsize=None)
def _outline(size: int, box: int | None = None) -> Tensor:
    """Each sprite's implicit function at its box's pixel centres, <= 0 inside the shape: (3, 6, 40, p, p, box,
    box) float64 for (shape, scale, orientation, x phase, y phase, row, column), with p = 64 // size phases per
    axis (the centre 0 or 1/2 pixel right of, or below, a pixel corner) and box = size // 2 (default)."""
    box = size // 2 if box is None else box
    steps = 64 // size
    unit = _UNIT * size  # pixels
    phase = torch.arange(steps, dtype=torch.float64) / steps
    centres = torch.arange(box, dtype=torch.float64) + 0.5 - box // 2
    dx = (centres[None, :] - phase[:, None]) / unit  # (p, box): x of each column, right
    dy = (phase[:, None] - centres[None, :]) / unit  # (p, box): y of each row, up
    angle = torch.tensor(ORIENTATIONS, dtype=torch.float64)
    cos, sin = angle.cos()[:, None, None, None, None], angle.sin()[:, None, None, None, None]
    dx, dy = dx[None, :, None, None, :], dy[None, None, :, :, None]  # (1, p, 1, 1, box), (1, 1, p, box, 1)
    scale = torch.tensor(SCALES, dtype=torch.float64)[:, None, None, None, None, None]
    u, v = (cos * dx + sin * dy) / scale, (cos * dy - sin * dx) / scale  # (6, 40, p, p, box, box): the shape's axes
    return _implicit(u, v)


def _implicit(u: Tensor, v: Tensor) -> Tensor:
    """Each shape's implicit function at points ``(u, v)`` of its own axes (v up; unit: the square's half-side),
    <= 0 inside: (3, *u.shape), for square, ellipse (semi-axes 1 and 1/2) and heart."""
    square = torch.maximum(u.abs(), v.abs()) - 1
    ellipse = u**2 + (2 * v) ** 2 - 1
    w = v + _HEART_LIFT
    heart = (u**2 + w**2 - 1) ** 3 - u**2 * w**3
    return torch.stack([square, ellipse, heart])
