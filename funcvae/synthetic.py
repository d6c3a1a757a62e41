"""Coloured shapes: a synthetic colour image set with known generative factors, made on the spot from a seed.

Each image holds one shape (square, circle or triangle) of one of ``len(COLOURS)`` colours, one of
``len(SCALES)`` sizes, at one of ``POSITIONS`` x ``POSITIONS`` places, on black; every factor is drawn uniformly
and independently. Edges are anti-aliased (each pixel is the share of a 4 x 4 grid of points inside the shape),
so the images hold intermediate 8-bit levels as photographs do. The factors are returned with the images, for
measures that compare latents with them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from funcvae.checks import check_int
from funcvae.rng import generator

SHAPES = ("square", "circle", "triangle")
#: RGB levels: red, green, yellow, blue, orange, purple.
COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180))
#: Half the shape's width, as a share of the image's.
SCALES = (0.12, 0.16, 0.20, 0.24)
#: Places per axis: the shape's centre on an even grid from 0.25 to 0.75 of the image, so no shape is cut.
POSITIONS = 8
#: Each factor's name and its number of values; ``shapes`` returns an index in [0, size) for each.
FACTORS = {"shape": len(SHAPES), "colour": len(COLOURS), "scale": len(SCALES), "x": POSITIONS, "y": POSITIONS}
_SUBPIXELS = 4
_CHUNK = 256  # images drawn at once: the sub-pixel grid of 256 images of 64 x 64 is 16 MB of floats


def shapes(n: int, size: int = 32, seed: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    """``n`` images of coloured shapes and their factors; the same arguments give the same images.

    Args:
      n: number of images, >= 1.
      size: height and width in pixels, >= 8.
      seed: names the draw, >= 0.

    Returns:
      (images, factors): images (n, 3, size, size) uint8 levels 0..255; factors a dict of (n,) int64 indices,
      keyed and sized as ``FACTORS`` (``SHAPES[factors["shape"][i]]`` is image i's shape, and so on).
    """
    n, size = check_int("n", n), check_int("size", size, minimum=8)
    gen = generator(check_int("seed", seed, minimum=0), "shapes")
    factors = {name: torch.randint(count, (n,), generator=gen) for name, count in FACTORS.items()}
    images = torch.cat([_draw({k: v[i:i + _CHUNK] for k, v in factors.items()}, size) for i in range(0, n, _CHUNK)])
    return images, factors


def _draw(factors: dict[str, Tensor], size: int) -> Tensor:
    """The images of one chunk of factors: (m, 3, size, size) uint8."""
    places = torch.linspace(0.25, 0.75, POSITIONS)
    cx, cy = places[factors["x"]][:, None, None], places[factors["y"]][:, None, None]
    r = torch.tensor(SCALES)[factors["scale"]][:, None, None]
    points = (torch.arange(size * _SUBPIXELS, dtype=torch.float32) + 0.5) / (size * _SUBPIXELS)
    dx, dy = points[None, None, :] - cx, points[None, :, None] - cy  # (m, 1, W), (m, H, 1): y grows downwards
    square = (dx.abs() <= r) & (dy.abs() <= r)
    circle = dx**2 + dy**2 <= r**2
    triangle = (dy <= r) & (dx.abs() <= (dy + r) / 2)  # apex at the top, base 2r wide at the bottom
    kind = factors["shape"][:, None, None]
    inside = torch.where(kind == 0, square, torch.where(kind == 1, circle, triangle))
    m = inside.shape[0]
    cover = inside.float().reshape(m, size, _SUBPIXELS, size, _SUBPIXELS).mean((2, 4))
    colour = torch.tensor(COLOURS, dtype=torch.float32)[factors["colour"]]
    return torch.round(cover[:, None] * colour[:, :, None, None]).to(torch.uint8)
