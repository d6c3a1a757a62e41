"""Real image data through torchvision's dataset classes, found on disk before any download.

``load(name, split)`` looks, in order, in ``root`` (torchvision's layout ``root/<Class>/raw/`` or the four
IDX files, gzipped or not, directly in ``root``), then in the Debian package location
(``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST in /usr/share/datasets/fashion-mnist),
and only then downloads. Gzipped files are unpacked once into a cache folder (``$FUNCVAE_DATA``, default
``~/.cache/funcvae``), one folder per source, where torchvision reads them. ``load("shapes", split)`` reads
nothing: it draws the dSprites-like set of ``funcvae.sprites`` at ``SHAPES_LOADED``'s size and grid.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from funcvae import images, sprites, synthetic
from funcvae.rng import generator

DATASETS = {
    "mnist": (datasets.MNIST, Path("/usr/share/datasets/mnist")),
    "fashion-mnist": (datasets.FashionMNIST, Path("/usr/share/datasets/fashion-mnist")),
    "shapes": (None, None),  # drawn, not read: sprites.shapes(split, **SHAPES_LOADED)
}
#: What ``load("shapes", split)`` draws: the small grid at 32 x 32, for runs on a CPU.
SHAPES_LOADED = dict(size=32, grid="small")
#: Each data set's example shape (C, H, W); shapes' follows from the size ``load`` draws it at.
INPUT_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                "shapes": (1, SHAPES_LOADED["size"], SHAPES_LOADED["size"])}
SPLITS = ("train", "test")
#: Images of one's own: a folder of image files, or a .npy / .npz file (``funcvae.images``).
folder, array = images.folder, images.array
#: A dSprites-like set on a grid of known factors: (N, 1, H, W) uint8 and (N, 5) factors (``funcvae.sprites``).
shapes = sprites.shapes
#: Coloured shapes made from a seed, with their factors: (N, 3, H, W) uint8 (``funcvae.synthetic``).
coloured_shapes = synthetic.shapes
BINARIZE = (None, "static")
PIXELS = ("float32", "uint8")
_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load(name: str, split: str, root: str | os.PathLike | None = None, binarize: str | None = None,
         seed: int = 0, pixels: str = "float32") -> Tensor:
    """Images of ``name`` ("mnist" or "fashion-mnist"), ``split`` ("train": 60k, "test": 10k); or of "shapes",
    the dSprites-like set's small grid at 32 x 32 (``shapes(split, **SHAPES_LOADED)``: train 41,401, test 4,679
    binary images, drawn in a fraction of a second; ``root`` is not used).

    Args:
      root: a folder to look in first, and to download into when the data is found nowhere.
      binarize: None for grey levels in [0, 1]; "static" for one fixed Bernoulli draw per pixel, seeded
        by ``seed`` (for a fresh draw every batch use ``fit(..., binarize="dynamic")``).
      pixels: "float32" for the grey levels / 255; "uint8" for the file's own 8-bit levels 0..255 (0 or 1,
        the same draw, when binarised), a quarter of the memory: ``fit(..., scale=255)`` (1 when binarised)
        trains on them exactly as on the float32 images.

    Returns:
      (N, 1, 28, 28) (shapes: (N, 1, 32, 32)) float32 in [0, 1], or uint8.

    Raises:
      FileNotFoundError: nothing on disk and no download possible; the message says where it looked.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {tuple(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if binarize not in BINARIZE:
        hint = " (dynamic binarisation is fit(..., binarize='dynamic'))" if binarize == "dynamic" else ""
        raise ValueError(f"binarize must be one of {BINARIZE}, got {binarize!r}{hint}")
    if pixels not in PIXELS:
        raise ValueError(f"pixels must be one of {PIXELS}, got {pixels!r}")
    if name == "shapes":
        levels = sprites.shapes(split, **SHAPES_LOADED)[0]
    else:
        levels = _dataset(name, split == "train", root).data.unsqueeze(1)
    if binarize is None:
        return levels if pixels == "uint8" else levels.to(torch.float32) / 255.0
    gen = generator(seed, "static-binarize", name, split)
    images = torch.bernoulli(levels.to(torch.float32) / 255.0, generator=gen)
    return images.to(torch.uint8) if pixels == "uint8" else images


def labels(name: str, split: str, root: str | os.PathLike | None = None) -> Tensor:
    """The class labels of ``load(name, split, root)``'s images, in their order: (N,) int64 in [0, 10) (the
    context of a conditional model, ``fit(..., context=labels)``); for "shapes", the shape, in [0, 3)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {tuple(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "shapes":
        return sprites.points(split, SHAPES_LOADED["grid"])[:, 0].clone()
    return torch.as_tensor(_dataset(name, split == "train", root).targets, dtype=torch.int64)


def held_out(x: Tensor, seed: int, binarize: str | None) -> Tensor:
    """The held-out set a run scores itself on: ``x`` itself, or under ``binarize="dynamic"`` (fit's option)
    one fixed Bernoulli draw of it for ``seed``, the same every epoch (what ``fit`` and ``eval`` use)."""
    if binarize != "dynamic":
        return x
    return torch.bernoulli(x, generator=generator(seed, "val-binarize", device=x.device))


def _dataset(name: str, train: bool, root):
    cls, system_dir = DATASETS[name]
    looked = []
    for base in ([Path(root)] if root is not None else []) + [system_dir]:
        for folder in (base / cls.__name__ / "raw", base):
            looked.append(str(folder))
            if folder.name == "raw" and _has_files(folder, packed=False):
                return cls(str(base), train=train, download=False)  # torchvision's own layout, unpacked
            if _has_files(folder, packed=True):
                return cls(str(_stage(folder, cls.__name__)), train=train, download=False)
    target = Path(root) if root is not None else _cache_dir()
    try:
        return cls(str(target), train=train, download=True)
    except Exception as e:  # torchvision raises RuntimeError or URLError subclasses when offline
        apt = " or `apt-get install dataset-fashion-mnist` (Debian)" if name == "fashion-mnist" else ""
        raise FileNotFoundError(
            f"{name} not found in {', '.join(looked)} and the download into {target} failed ({e}). "
            f"Put the four IDX files (e.g. train-images-idx3-ubyte.gz) in a folder and pass root=<folder>{apt}."
        ) from e


def _has_files(folder: Path, *, packed: bool) -> bool:
    return all((folder / f).is_file() or (packed and (folder / f"{f}.gz").is_file()) for f in _FILES)


def _cache_dir() -> Path:
    return Path(os.environ.get("FUNCVAE_DATA", Path.home() / ".cache" / "funcvae"))


def _stage(folder: Path, class_name: str) -> Path:
    """Unpack the IDX files of ``folder`` into a cache root of its own (``<cache>/staged/<hash>/<Class>/raw``)
    and return that root. A copy is redone whenever its source's size or mtime differs from the record."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    staged = _cache_dir() / "staged" / key
    raw = staged / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in _FILES:
        plain, packed = folder / f, folder / f"{f}.gz"
        source = plain if plain.is_file() else packed
        stat = source.stat()
        stamp, dest = raw / f".{f}.source", raw / f
        record = f"{source.resolve()} {stat.st_size} {stat.st_mtime_ns}"
        if dest.is_file() and stamp.is_file() and stamp.read_text() == record:
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{f}.")
        with os.fdopen(fd, "wb") as out, (open(source, "rb") if source is plain else gzip.open(source)) as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, dest)
        stamp.write_text(record)
    return staged
