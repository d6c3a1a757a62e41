"""Images of one's own as one uint8 array: a folder of image files decoded by PIL, or a .npy / .npz file.

A folder is torchvision's ImageFolder layout (``path/<class>/<file>``, labels from the sorted class names, the
files listed by torchvision's own ``make_dataset``, so images and labels come in ImageFolder's order) or a flat
folder of images (``path/<file>``, sorted by name). Files whose extension is not an image's (ImageFolder's
list) are skipped, as ImageFolder skips them: dataset folders carry READMEs, CSVs of labels, .DS_Store.
Every file's size and mode are read from its header before any pixel is decoded, so a mixed folder fails at
once, naming two of its files. With ``cache=`` the images are decoded one by one into a memory-mapped .npy
file, so a tree bigger than memory becomes one array on disk, reused while the folder is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

#: The file extensions read as images (ImageFolder's); other files are skipped.
EXTENSIONS = IMG_EXTENSIONS
#: The modes ``mode=`` converts every image to.
MODES = ("L", "RGB")
#: How ``size=`` resizes: PIL's bilinear filter, antialiased when shrinking (torchvision's ``Resize`` default).
RESAMPLE = Image.Resampling.BILINEAR
#: What each 8-bit PIL mode is read as without ``mode=``: bilevel as grey levels 0/255, a palette as the
#: colours it indexes, CMYK and YCbCr as RGB; an alpha channel is kept as a last channel.
_NATURAL = {"1": "L", "L": "L", "LA": "LA", "P": "RGB", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA",
            "CMYK": "RGB", "YCbCr": "RGB"}
#: Modes of more than 8 bits: PIL converts them to 8 bits by clipping, not scaling, so they are refused.
_WIDE = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
#: Rows of an array hashed at a time by ``sha256`` (a memory map is never read whole).
_CHUNK_BYTES = 1 << 24
#: The .npz keys of images and of labels, in the order looked for.
_IMAGE_KEYS, _LABEL_KEYS = ("x", "images"), ("y", "labels")


def folder(path, *, size: int | tuple[int, int] | None = None, mode: str | None = None, labels: bool = False,
           cache=None):
    """The images of a folder, decoded by PIL, as one uint8 array.

    Args:
      path: a folder of class folders (``path/<class>/<file>``, searched recursively, as ImageFolder does) or
        of image files (``path/<file>``).
      size: None (every image must have the same size), an int for square (size, size) images (not
        torchvision's shorter side: one array needs one shape), or (height, width); images of another size
        are resized with ``RESAMPLE``.
      mode: None (every image must read as the same mode: grey "L", "RGB", or those with alpha, "LA" and
        "RGBA"), or "L" or "RGB": every image converted by PIL (an alpha channel is dropped).
      labels: also return each image's class, the index of its folder among the sorted class names.
      cache: a .npy file to decode into and return memory-mapped; reused while its sidecar
        ``<cache>.source.json`` records this folder's files (names, sizes, modification times) and options.

    Returns:
      (N, C, H, W) uint8 levels 0..255: a tensor, or with ``cache`` a read-only ``np.memmap``; with ``labels``
      the pair (images, (N,) int64 tensor).

    Raises:
      FileNotFoundError: no such folder.
      ValueError: bad options; a folder with no image files, with both images and class folders at its top,
        or with an empty class folder; ``labels`` without class folders; images of different sizes or modes
        without ``size`` or ``mode`` (two such files named); a file PIL cannot read, or of 16-bit or float
        pixels (named).
    """
    hw, cache = _check_options(size, mode, cache)
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder" if not root.exists() else f"{root} is not a folder")
    files, targets = _listing(root, labels)
    y = torch.tensor(targets, dtype=torch.int64) if labels else None
    if cache is not None:
        record = _record(root, files, hw, mode)
        if not _fresh(cache, record):
            _decode_into_cache(files, hw, mode, cache, record)
        x = np.load(cache, mmap_mode="r")
    else:
        x = torch.from_numpy(_decode(files, hw, mode, np.empty))
    return (x, y) if labels else x


def array(path, *, mmap: bool = True, labels: bool = False):
    """The images of a .npy or .npz file, as stored (any shape and numeric dtype; ``fit`` checks them).

    Args:
      path: a .npy file (one array), or a .npz holding a single array or the images under "x" or "images"
        (and the labels under "y" or "labels").
      mmap: a .npy file memory-mapped read-only (its pages are read when used, so it may exceed memory) rather
        than read whole. A .npz member is always read whole: a zip archive cannot be memory-mapped.
      labels: also return the labels of a .npz file.

    Returns:
      The array (``np.memmap`` for a memory-mapped .npy, else ``np.ndarray``); with ``labels`` the pair
      (array, (N,) int64 tensor).

    Raises:
      FileNotFoundError: no such file.
      ValueError: another suffix; a file numpy cannot read (or of Python objects); a .npz whose keys do not
        say which array is which (the keys named); ``labels`` for a .npy file, or labels that are not (N,)
        integers.
    """
    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".npy":
        if labels:
            raise ValueError(f"{path}: a .npy file holds one array, so it has no labels; save images and labels "
                             "together in a .npz under 'x' and 'y'")
        return _loaded(path, lambda: np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False))
    with _loaded(path, lambda: np.load(path, allow_pickle=False)) as archive:
        keys = archive.files
        x_key = keys[0] if len(keys) == 1 and not labels else _key(path, keys, _IMAGE_KEYS, "images")
        x = _loaded(path, lambda: archive[x_key], x_key)
        if not labels:
            return x
        y_key = _key(path, keys, _LABEL_KEYS, "labels")
        return x, _labels(_loaded(path, lambda: archive[y_key], y_key), x.shape[0], f"{path}[{y_key!r}]")


def sha256(x) -> str:
    """The SHA-256 of the bytes of ``x`` (a tensor or array, in C order), read ``_CHUNK_BYTES`` at a time, so a
    memory map is never read whole (equal to ``hashlib.sha256(np.ascontiguousarray(x).tobytes())``)."""
    x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    digest = hashlib.sha256()
    if x.ndim == 0:
        digest.update(x.tobytes())
        return digest.hexdigest()
    rows = max(1, _CHUNK_BYTES // max(1, x[:1].nbytes))
    for start in range(0, x.shape[0], rows):
        digest.update(np.ascontiguousarray(x[start:start + rows]).data)
    return digest.hexdigest()


def _check_options(size, mode, cache) -> tuple[tuple[int, int] | None, Path | None]:
    """``size`` as (height, width) or None and ``cache`` as a Path or None, once both and ``mode`` are valid."""
    if size is not None:
        pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (tuple, list)) else ()
        if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
            raise ValueError(f"size must be an int >= 1 or (height, width) of ints >= 1, got {size!r}")
        size = pair
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be None or one of {MODES}, got {mode!r}")
    if cache is not None:
        cache = Path(cache)
        if cache.suffix != ".npy":
            raise ValueError(f"cache must be a .npy file, got {str(cache)!r}")
    return size, cache


def _listing(root: Path, labels: bool) -> tuple[list[Path], list[int]]:
    """The image files of ``root`` in their order, and each one's class index (0 in a flat folder)."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    images = [e.name for e in entries if not e.is_dir() and has_file_allowed_extension(e.name, EXTENSIONS)]
    if classes and images:
        raise ValueError(f"{root} holds both image files ({images[0]}) and folders ({classes[0]}/); put every image "
                         "in a class folder (path/<class>/<file>) or none (path/<file>)")
    if not classes:
        if labels:
            raise ValueError(f"{root} has no class folders to label its images by (labels=True reads "
                             "path/<class>/<file>)")
        if not images:
            _no_images(root, [e.name for e in entries])
        return [root / name for name in images], [0] * len(images)
    found = make_dataset(root, {name: i for i, name in enumerate(classes)}, EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[i] for _, i in found})
    if len(empty) == len(classes):
        _no_images(root, [p.relative_to(root) for p in sorted(root.rglob("*")) if p.is_file()])
    if empty:  # ImageFolder refuses these too: each would still take a label
        raise ValueError(f"{root}: the class folders {', '.join(empty)} hold no image files "
                         f"({', '.join(EXTENSIONS)}); remove them or add images")
    return [Path(p) for p, _ in found], [i for _, i in found]


def _no_images(root: Path, names: list) -> None:
    """ValueError: ``root`` has no image files; ``names``, its other files, are named."""
    others = f"; its files ({', '.join(map(str, names[:3]))}{', ...' if len(names) > 3 else ''}) are not" if names \
        else " (it is empty)"
    raise ValueError(f"{root} holds no image files ({', '.join(EXTENSIONS)}){others}")


def _survey(files: list[Path], size, mode) -> tuple[int, int, int]:
    """The (C, H, W) every image becomes, from the files' headers (no pixel decoded); ValueError naming two
    files of different sizes (without ``size``) or modes (without ``mode``), or a file PIL cannot open."""
    first = None
    for path in files:
        with _opened(path) as image:
            found = (_target(image, mode, path), image.size)
        if first is None:
            first = (path, *found)
        elif mode is None and found[0] != first[1]:
            raise ValueError(f"{first[0]} reads as mode {first[1]} and {path} as {found[0]}; pass mode='L' or "
                             "mode='RGB' to convert every image")
        elif size is None and found[1] != first[2]:
            raise ValueError(f"{first[0]} is {_hw(first[2])} and {path} is {_hw(found[1])} (height x width); pass "
                             "size=(height, width) to resize every image")
    _, target, (w, h) = first
    return Image.getmodebands(target), *(size or (h, w))


def _decode(files: list[Path], size, mode, allocate) -> np.ndarray:
    """Every image decoded into ``allocate(shape, dtype)``'s (N, C, H, W) uint8 array, which is returned."""
    c, h, w = _survey(files, size, mode)
    out = allocate((len(files), c, h, w), np.uint8)
    for i, path in enumerate(files):
        with _opened(path) as image:
            target = _target(image, mode, path)
            try:
                image = image.convert(target)  # the pixels are decoded here, by the first call that needs them
                if image.size != (w, h):
                    image = image.resize((w, h), RESAMPLE)
                pixels = np.asarray(image)
            except Exception as e:  # noqa: BLE001 - a damaged file fails in PIL's plugins with any error type
                raise ValueError(f"{path} could not be decoded ({type(e).__name__}: {e})") from None
        out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return out


def _opened(path: Path) -> Image.Image:
    """``Image.open(path)`` (its header read, no pixel decoded); ValueError naming a file PIL cannot open."""
    try:
        return Image.open(path)
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise OSError, SyntaxError, struct.error, ... on bad files
        raise ValueError(f"{path} is not an image PIL can read ({type(e).__name__}: {e})") from None


def _target(image: Image.Image, mode: str | None, path: Path) -> str:
    """The mode ``image`` is converted to: ``mode``, or the 8-bit mode its own reads as (``_NATURAL``)."""
    if image.mode in _WIDE:
        raise ValueError(f"{path} has {'float' if image.mode == 'F' else '16- or 32-bit'} pixels (PIL mode "
                         f"{image.mode}); this reads 8-bit images (PIL would clip the levels above 255)")
    if mode is not None:
        return mode
    if image.mode == "P" and "transparency" in image.info:
        return "RGBA"
    if image.mode not in _NATURAL:
        raise ValueError(f"{path} is in PIL mode {image.mode}; pass mode='L' or mode='RGB' to convert it")
    return _NATURAL[image.mode]


def _hw(wh: tuple[int, int]) -> str:
    return f"{wh[1]}x{wh[0]}"


def _record(root: Path, files: list[Path], size, mode) -> dict:
    """What a cache of ``files`` records of its source: the folder, the options, and a digest of every file's
    name, size and modification time (a file changed, added or removed is another digest)."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"source": str(root.resolve()), "size": None if size is None else list(size), "mode": mode,
            "files": len(files), "sha256": digest.hexdigest()}


def _sidecar(cache: Path) -> Path:
    return cache.with_name(cache.name + ".source.json")


def _fresh(cache: Path, record: dict) -> bool:
    """Whether ``cache`` holds the images ``record`` describes: its sidecar records the same source and the
    cache file as it was written (its size and modification time; another file put there is not reused)."""
    try:
        kept = json.loads(_sidecar(cache).read_text())
        stat = cache.stat()
    except (OSError, ValueError):
        return False
    return kept == {**record, "cache": [stat.st_size, stat.st_mtime_ns]}


def _decode_into_cache(files: list[Path], size, mode, cache: Path, record: dict) -> None:
    """The images decoded one by one into a temporary .npy beside ``cache`` that then replaces it, and the
    sidecar written. The old sidecar goes first, so an interrupted rebuild is never taken for a fresh cache."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    _sidecar(cache).unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".tmp")
    os.close(fd)
    try:
        out = _decode(files, size, mode, lambda shape, dtype: np.lib.format.open_memmap(
            tmp, mode="w+", dtype=dtype, shape=shape))
        out.flush()
        del out  # closes the memory map before the file is moved
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    stat = cache.stat()
    _write_atomically(_sidecar(cache), json.dumps({**record, "cache": [stat.st_size, stat.st_mtime_ns]}, indent=2))


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def _loaded(path: Path, read, key: str | None = None):
    """``read()``, numpy's reading of ``path`` (its member ``key``); ValueError naming the file when it fails."""
    try:
        return read()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        what = f"{path}[{key!r}]" if key is not None else str(path)
        objects = "allow_pickle" in str(e) or "Python objects" in str(e)
        why = "it holds Python objects, not numbers" if objects else f"{type(e).__name__}: {e}"
        raise ValueError(f"{what} could not be read as an array ({why})") from None


def _key(path: Path, keys: list[str], names: tuple[str, str], what: str) -> str:
    """The one of ``names`` among ``keys`` (a .npz file's); ValueError naming the keys when none or both are."""
    present = [k for k in names if k in keys]
    if len(present) != 1:
        why = "both" if present else "neither"
        raise ValueError(f"{path} holds the arrays {', '.join(map(repr, keys))}, {why} of {names[0]!r} and "
                         f"{names[1]!r}; save the {what} under one of them")
    return present[0]


def _labels(y: np.ndarray, n: int, where: str) -> Tensor:
    """Labels ``y`` as an (n,) int64 tensor; ValueError unless they are ``n`` integers."""
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise ValueError(f"{where}: labels must be ({n},) integers, one per image, got shape {y.shape} of {y.dtype}")
    return torch.from_numpy(y.astype(np.int64))
