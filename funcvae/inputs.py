"""Data reading: what a user passes as data (tensor, array, Dataset, DataLoader, PIL images) as a validated
(N, features) float tensor, or, for a training set of 8-bit pixels, a uint8 one and its scale.

Every check runs before any work, so bad input fails at once with an error that names the problem.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from funcvae.checks import check_scale, first_index
from funcvae.ondisk import OnDisk, is_mapped
from funcvae.pixels import level_values, pixel_values

#: PIL image modes whose values are intensities (grey levels or RGB, with or without alpha); the others hold
#: palette indices or another colour space, which would pass for pixels silently.
PIL_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Unsigned dtypes torch cannot yet compare or reduce, and what their range is read in (exactly, but for
# uint64 values beyond 2^53).
_WIDER = {torch.uint16: torch.int64, torch.uint32: torch.int64, torch.uint64: torch.float64}


def as_examples(data, model, *, scale: float | None = None, like: Tensor, name: str = "data") -> Tensor:
    """Validate ``data`` for ``model`` (a ``funcvae.Model``) and return it as (N, features) in ``like``'s dtype/device.

    Accepts a tensor (sparse and quantized ones as their values), a numpy array, a Dataset (map-style, or an
    IterableDataset, read once) or a DataLoader whose items are examples or ``(example, label)`` pairs;
    an example may be a tensor, an array or a PIL image (torchvision's datasets without a transform), which
    becomes (channels, H, W) of its integer pixels. Images may be (N, F), (N, H, W) when there is one
    channel, or (N, C, H, W). Integer data must lie in [0, 1] unless ``scale`` says what to divide by (255
    for 8-bit pixels).

    Raises:
      TypeError: an unsupported container, item or dtype.
      ValueError: empty data, a wrong shape, data without values (the meta device), NaN/Inf, a bad scale, or
        values outside the likelihood's support.
    """
    scale = check_scale(scale)
    x, from_pil = _read(data, model, name)
    _check_scaled(x, scale, name)
    return _as_float(x, model, scale, like, name, from_pil)


def as_levels(data, model, *, scale: float | None = None, like: Tensor,
              name: str = "data") -> tuple[Tensor | OnDisk, int | float | None]:
    """``data`` as ``fit`` holds its training set: 8-bit data as uint8 levels, the rest as ``as_examples`` gives.

    Integer or bool data whose values all lie in [0, 255] become (N, features) uint8 on ``like``'s device,
    returned with the scale that makes them the values the model sees (``pixel_values`` of
    ``level_values(scale, like.dtype)``), equal bit for bit to ``as_examples``'s: ``scale``, or 1 without
    one (the values must then be 0 or 1, as ``as_examples`` requires). That is a quarter of float32's memory,
    and checking them makes no float copy: the likelihood's support is checked on the values of their levels
    (``check_values``). Other data come back as ``as_examples``'s tensor with the scale None. Arguments
    and errors as ``as_examples``'s.

    A memory map of a file (``is_mapped``: ``np.load(path, mmap_mode="r")``) is never read whole: its rows stay
    in the file, returned as ``OnDisk``, checked block by block; it must hold integers (or bools) that are levels
    in [0, 255] (ValueError otherwise, naming the range and the first value outside, or saying how to proceed
    with floats).
    """
    scale = check_scale(scale)
    if is_mapped(data):
        return _levels_on_disk(data, model, scale, like, name)
    x, from_pil = _read(data, model, name)
    _check_scaled(x, scale, name)
    if not x.is_floating_point():
        if scale is None and x.dtype != torch.bool:
            _check_unit_integers(x, name, from_pil)  # 0 or 1 from here on
        if scale is None or x.dtype in (torch.bool, torch.uint8) or _in_byte_range(x):
            scale = 1 if scale is None else scale
            levels = x.to(torch.uint8).to(like.device)
            check_values(levels, scale, like.dtype, name, model.likelihood.check_support)
            return levels, scale
    return _as_float(x, model, scale, like, name, from_pil), None


def _check_scaled(x: Tensor, scale, name: str) -> None:
    """``scale`` divides pixel levels (integers, or floats holding integers, such as 0..255). Refused where
    they are values already, which it would silently darken: bools, floats that are not whole numbers, and data
    all within [0, 1] divided by a scale above 1."""
    if scale is None or x.numel() == 0:
        return
    why = "bool" if x.dtype == torch.bool else None
    if why is None and x.is_floating_point() and not bool((x == x.round()).all()):
        why = "not whole numbers"
    if why is None and scale > 1 and float(x.max() if x.is_floating_point() else _wide(x).max()) <= 1:
        why = "all within [0, 1]"
    if why is not None:
        raise _scaled_values(name, scale, why)


def _scaled_values(name: str, scale, why: str) -> ValueError:
    return ValueError(f"scale divides 8-bit pixel levels (such as 0..255), but {name} are {why}: values "
                      f"already, which dividing by {scale} would darken; leave scale unset")


def _levels_on_disk(data: np.memmap, model, scale, like: Tensor, name: str) -> tuple[OnDisk, int | float]:
    """A memory map of integer pixel levels as ``OnDisk`` rows of its file and their scale, checked as
    ``as_levels`` checks levels held in memory, with its messages, one block of the file at a time."""
    kind = data.dtype.kind
    if kind not in "biu":
        # Read whole, a float map would be a float copy in memory: the point of a map is lost, so say so.
        raise ValueError(f"{name} is a memory map of {data.dtype}: fit reads a memory-mapped training set from "
                         "its file batch by batch as integer pixel levels only (uint8, or integers in [0, 255], "
                         "with scale=); save the images as uint8 levels (for values in [0, 1]: "
                         "np.rint(x * 255).astype(np.uint8), then scale=255), or pass np.array(data) to train on "
                         "them in memory")
    x = OnDisk(data, _flat_shape(data.shape, model, name)[1], like.device)
    lo, hi = x.min(), x.max()
    if scale is None and kind != "b" and (lo < 0 or hi > 1):
        _, where, value = x.find(lambda rows: (rows < 0) | (rows > 1))
        raise _unit_integers(name, f"{data.dtype}, a memory map", lo, hi, value, where)
    if scale is not None:
        why = "bool" if kind == "b" else "all within [0, 1]" if scale > 1 and hi <= 1 else None
        if why is not None:
            raise _scaled_values(name, scale, why)
        if lo < 0 or hi > 255:
            _, where, value = x.find(lambda rows: (rows < 0) | (rows > 255))
            raise ValueError(f"{name} is a memory map of {data.dtype} with values in [{lo}, {hi}]: fit reads a "
                             "memory-mapped training set from its file as 8-bit pixel levels only, in [0, 255] "
                             f"(the first value outside is {value}, at index {where}); save the images as uint8 "
                             "levels, or pass np.array(data) to train on them in memory as floats")
    scale = 1 if scale is None else scale
    check_values(x, scale, like.dtype, name, model.likelihood.check_support)
    return x, scale


def check_values(x: Tensor | OnDisk, scale: int | float | None, dtype: torch.dtype, name: str, check) -> None:
    """``check(values, name)``, a support check (``distributions.check_support``'s), of the values ``x`` stands
    for: ``x`` itself when ``scale`` is None, else those of uint8 levels ``x`` (N, F) in ``dtype``
    (``pixel_values``; in memory or ``OnDisk``), checked on the values of the levels 0..max rather than on a
    float copy of ``x``; where one of those is refused, levels in memory are checked on their own values, and
    ``OnDisk`` levels for the refused levels they hold.

    Raises:
      ValueError: ``check_support``'s, word for word; for ``OnDisk`` levels, whose values are never all in
        memory, its words on the first example (F,) that holds a refused level, named ``f"{name}'s example
        {i}"`` (the levels refused are found one by one, the example in one pass over the file).
    """
    if scale is None:
        check(x, name)
        return
    values = level_values(scale, dtype)[:int(x.max()) + 1]
    try:
        check(values, name)
    except ValueError:
        if isinstance(x, Tensor):
            # The data's own values decide, in the float path's words for any likelihood: a level refused above
            # may be one the data do not hold, where a support is no interval (the discretised logistic's levels
            # k/255 under another scale). The float copy is made on this path only.
            check(pixel_values(x, level_values(scale, dtype, x.device)), name)
            return
        refused = [level for level in range(len(values)) if not _accepts(check, values[level:level + 1], name)]
        _, where, _ = x.find(lambda rows: np.isin(rows, refused))
        if where is not None:
            example = x.index_select(0, torch.tensor([where[0]]))[0].cpu()
            check(pixel_values(example, values), f"{name}'s example {where[0]}")


def _accepts(check, values: Tensor, name: str) -> bool:
    """Whether the support check ``check`` takes ``values``."""
    try:
        check(values, name)
    except ValueError:
        return False
    return True


def read_labelled(data, model, name: str = "data") -> tuple[Tensor, list | None]:
    """``data`` read once into (N, features) of its own values and dtype, and the labels of its items where
    they are ``(example, label)`` pairs (a list of N, else None), read together so a shuffling DataLoader keeps
    each label with its example."""
    found: list = []
    x, _ = _read(data, model, name, found)
    return x, (found if found and len(found) == x.shape[0] else None)


def _read(data, model, name: str, labels: list | None = None) -> tuple[Tensor, bool]:
    """``data`` as (N, features) of its own dtype, and whether it came from PIL images; the labels of
    labelled items are appended to ``labels`` when it is given."""
    x, from_pil = _to_tensor(data, name, labels)
    x = x.reshape(_flat_shape(x.shape, model, name))
    if x.is_complex():
        raise TypeError(f"{name} has complex dtype {x.dtype}; expected real pixel values")
    return x, from_pil


def _as_float(x: Tensor, model, scale, like: Tensor, name: str, from_pil: bool) -> Tensor:
    """(N, features) ``x`` divided by ``scale`` (in float64), in ``like``'s dtype and device, checked."""
    if scale is not None:
        x = x.to(torch.float64) / scale
    elif not x.is_floating_point() and x.dtype != torch.bool:
        _check_unit_integers(x, name, from_pil)
    x = x.to(dtype=like.dtype, device=like.device)
    model.likelihood.check_support(x, name)
    return x


def _to_tensor(data, name: str, labels: list | None = None) -> tuple[Tensor, bool]:
    """``data`` as one tensor of examples, and whether they came from PIL images (labels appended to
    ``labels``)."""
    if isinstance(data, Tensor):
        return _values(data.detach(), name), False
    if isinstance(data, np.ndarray):
        return _from_numpy(data, name), False
    if isinstance(data, DataLoader):
        parts = [_example(batch, f"{name}'s batch {i}", labels, batched=True) for i, batch in enumerate(data)]
        return _joined(parts, name, "DataLoader", "batch")
    if isinstance(data, IterableDataset):  # no length: read once, like a DataLoader
        parts = [_example(item, f"{name}'s item {i}", labels) for i, item in enumerate(data)]
        return _joined(parts, name, "IterableDataset", "item")
    if isinstance(data, Dataset):
        parts = [_example(data[i], f"{name}'s item {i}", labels) for i in range(len(data))]
        return _joined(parts, name, "Dataset", "item")
    hint = " (stack the examples into a tensor or array, or wrap them in a Dataset)" if isinstance(
        data, (list, tuple)) else ""
    raise TypeError(f"{name} must be a torch.Tensor, numpy array, Dataset or DataLoader, got {type(data).__name__}"
                    + hint)


def _values(x: Tensor, name: str) -> Tensor:
    """``x`` as a dense (strided) tensor of its values: a sparse one densified, a quantized one dequantized."""
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device (no values): pass a tensor that holds the data")
    if x.is_nested:
        raise TypeError(f"{name} is a nested tensor; examples must share one shape (pad or resize them)")
    if x.layout != torch.strided:
        x = x.to_dense()
    return x.dequantize() if x.is_quantized else x


def _from_numpy(data: np.ndarray, name: str) -> Tensor:
    if data.dtype == object:
        raise TypeError(f"{name} is a numpy array of Python objects; expected numbers")
    if data.dtype.kind not in "biufc":
        raise TypeError(f"{name} is a numpy array of dtype {data.dtype}; expected numbers")
    # torch reads native byte order only, and warns of read-only arrays (a PIL image's pixels, a memory map
    # opened for reading), which it would share: those are copied.
    array = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _example(item, where: str, labels: list | None = None, batched: bool = False) -> tuple[Tensor, bool]:
    """The example of a Dataset's item or a DataLoader's batch (labelled ones yield (example, label)) as a
    tensor, and whether it was a PIL image; the label (a batch's labels, one by one) goes to ``labels``."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError(f"{where} is an empty {type(item).__name__}; expected an example or (example, label)")
        if labels is not None and len(item) >= 2:
            labels.extend(list(item[1]) if batched else [item[1]])
        item = item[0]
    if isinstance(item, Tensor):
        return _values(item.detach(), where), False
    if isinstance(item, np.ndarray):
        return _from_numpy(item, where), False
    if _is_pil(item):
        return _from_pil(item, where), True
    if isinstance(item, (int, float, np.number, np.bool_)):
        return torch.as_tensor(item), False
    if isinstance(item, dict):
        raise TypeError(f"{where} is a dict (keys {list(item)}); pass the images themselves: a tensor or array "
                        "of them, or a Dataset or DataLoader whose items are images or (image, label) pairs")
    raise TypeError(f"{where} is a {type(item).__name__}; expected a tensor, numpy array or PIL image, or "
                    "(example, label)")


def _is_pil(value) -> bool:
    image = sys.modules.get("PIL.Image")  # without PIL imported, nothing is a PIL image
    return image is not None and isinstance(value, image.Image)


def _from_pil(image, where: str) -> Tensor:
    """A PIL image as (channels, H, W) of its pixels, in their own dtype (uint8 for 8-bit images)."""
    if image.mode not in PIL_MODES:
        raise TypeError(f"{where} is a PIL image in mode {image.mode!r}, whose values are not grey levels or RGB; "
                        "convert it first, e.g. image.convert('L') or image.convert('RGB')")
    x = _from_numpy(np.asarray(image), where)
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)


def _joined(parts: list[tuple[Tensor, bool]], name: str, kind: str, what: str) -> tuple[Tensor, bool]:
    """A Dataset's items stacked, or a DataLoader's batches concatenated; ValueError naming the first part
    whose shape differs from the first one's."""
    if not parts:
        raise ValueError(f"{name} is an empty {kind}")
    tensors = [t for t, _ in parts]
    stack = what == "item"
    key = (lambda t: t.shape) if stack else (lambda t: t.shape[1:])
    for i, t in enumerate(tensors):
        if not stack and t.ndim == 0:
            raise ValueError(f"{name}'s batch {i} is a single number; expected a batch of examples")
        if key(t) != key(tensors[0]):
            raise ValueError(f"{name}'s {what} {i} has shape {tuple(t.shape)} and {what} 0 {tuple(tensors[0].shape)}; "
                             "every example must have the same shape")
    joined = torch.stack(tensors) if stack else torch.cat(tensors)
    return joined, any(pil for _, pil in parts)


def _flat_shape(shape: tuple[int, ...], model, name: str) -> tuple[int, int]:
    """(N, features): the shape data of ``shape`` take as ``model``'s examples; ValueError for empty data or a
    shape that is not ``model``'s images."""
    shape = tuple(shape)
    if not shape or shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    c, h, w = model.input_shape
    ok = (len(shape) == 2 and shape[1] == model.features) or (len(shape) == 3 and c == 1 and shape[1:] == (h, w)) \
        or (len(shape) == 4 and shape[1:] == (c, h, w))
    if not ok:
        shapes = [f"(N, {model.features})", f"(N, {c}, {h}, {w})"] + ([f"(N, {h}, {w})"] if c == 1 else [])
        raise ValueError(f"{name} has shape {shape}; params built for {c}x{h}x{w} inputs take {' or '.join(shapes)}")
    return shape[0], model.features


def _check_unit_integers(x: Tensor, name: str, from_pil: bool) -> None:
    """ValueError unless integer data ``x`` (N, F) lie in [0, 1], naming the first value outside and where."""
    wide = _wide(x)
    lo, hi = int(wide.min()), int(wide.max())
    if lo < 0 or hi > 1:
        where = first_index((wide < 0) | (wide > 1))
        raise _unit_integers(name, f"{x.dtype}{', from PIL images' if from_pil else ''}", lo, hi, int(wide[where]),
                             where)


def _unit_integers(name: str, what: str, lo: int, hi: int, value: int, where: tuple) -> ValueError:
    """The error of integer data (``what``: their dtype and source) in [lo, hi], not [0, 1], without a scale."""
    return ValueError(
        f"{name} is integer ({what}) with values in [{lo}, {hi}], outside [0, 1]; state the scale, "
        f"e.g. scale=255 for 8-bit pixels (the first value outside is {value}, at index {where})"
    )


def _in_byte_range(x: Tensor) -> bool:
    """Whether integer data ``x`` lie in [0, 255], as 8-bit pixels do."""
    wide = _wide(x)
    return int(wide.min()) >= 0 and int(wide.max()) <= 255


def _wide(x: Tensor) -> Tensor:
    """Integer ``x`` in a dtype torch can compare and reduce."""
    return x.to(_WIDER[x.dtype]) if x.dtype in _WIDER else x
