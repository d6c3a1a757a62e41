"""The domain feature network: a small CNN classifier of 28x28 grey images whose penultimate layer (128 ReLU
units) gives the features the sample-quality metrics compare, as Inception's pool layer does for FID on
natural images; an ImageNet network knows little of clothes and digits.

conv 3x3 1->32, ReLU, max-pool 2; conv 3x3 32->64, ReLU, max-pool 2; dense 3136->128, ReLU (the features);
dense 128->10 (the logits). Weights for Fashion-MNIST ship with the package (``scripts/train_features.py``
made them), checked against their SHA-256 before use; weights for MNIST are trained the same way on first use
and cached beside the data, with their SHA-256 recorded next to them.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor

from funcvae import checkpoint, data, nn, optim, schedules
from funcvae._runtime import files
from funcvae.model import paths_and_leaves
from funcvae.rng import generator
from funcvae._runtime.progress import bar

#: Names ``load`` knows: the shipped network and the one trained on first use.
NETWORKS = ("fashion-mnist", "mnist")
FEATURES = 128
CLASSES = 10
#: How the shipped weights were trained (``train(x, y, seed=SEED, epochs=EPOCHS)``), and MNIST's are.
SEED = 0
EPOCHS = 5
#: The shipped weights: their file, its SHA-256, and their accuracy on Fashion-MNIST's 10k test images.
WEIGHTS = Path(__file__).with_name("fashion-mnist.safetensors")
SHA256 = "cfea98a73d9c7d3ada7081b130095de93e9c39a75dcd1c129bbe5782a438bcd2"
ACCURACY = 0.9105

#: Image sets this large have their features kept on disk by ``features``.
KEPT_FROM = 10_000
_CHUNK = 1024  # images per forward pass in ``apply``: the first layer's output is then 100 MB (float32)


def init(gen: torch.Generator) -> dict:
    """Params drawn like ``torch.nn``'s layers: ``conv_0``, ``conv_1``, ``hidden`` (the features), ``logits``."""
    return {
        "conv_0": nn.conv_init(gen, 1, 32, 3),
        "conv_1": nn.conv_init(gen, 32, 64, 3),
        "hidden": nn.dense_init(gen, 64 * 7 * 7, FEATURES),
        "logits": nn.dense_init(gen, FEATURES, CLASSES),
    }


def apply(tree: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """The features and class logits of images, a chunk at a time on ``tree``'s device.

    Args:
      tree: params from ``init``, ``train`` or ``load``.
      x: (N, 784), (N, 28, 28) or (N, 1, 28, 28) grey levels in [0, 1].

    Returns:
      features (N, 128), non-negative, and logits (N, 10), in ``x``'s dtype.
    """
    x = _images(x)
    device = tree["logits"]["kernel"].device
    chunks = bar(x.split(_CHUNK), desc="features", unit="chunk")  # a bar where stderr is a terminal
    outs = [_forward(tree, chunk.to(device)) for chunk in chunks]
    return torch.cat([f for f, _ in outs]), torch.cat([l for _, l in outs])


def features(name: str, x: Tensor) -> tuple[Tensor, Tensor]:
    """``apply(load(name), x)``. A set of ``KEPT_FROM`` images or more (a training set, which every ``eval``
    of a run compares its samples with) is passed once per network: its outputs are kept in funcvae's data
    folder under ``features/kept/``, named by the SHA-256 of the network's and the images' bytes, and read
    back (checked against their checksums) the next time; an unreadable file is computed again."""
    tree, x = load(name), _images(x)
    if x.shape[0] < KEPT_FROM:
        return apply(tree, x)
    key = hashlib.sha256(f"{name}\0{tuple(x.shape)}\0{x.dtype}\0".encode())
    for path, t in paths_and_leaves(tree):
        key.update(path.encode())
        key.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    key.update(x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    path = data._cache_dir() / "features" / "kept" / f"{name}-{key.hexdigest()[:32]}.safetensors"
    try:
        kept, meta = files.read(path)
        files.verify(path, kept, meta)
        return kept["features"], kept["logits"]
    except (FileNotFoundError, ValueError):
        pass
    feats, logits = apply(tree, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write(path, {"features": feats, "logits": logits}, {})
    return feats, logits


def accuracy(tree: dict, x: Tensor, y: Tensor) -> float:
    """The fraction of images ``x`` (as ``apply`` takes them) whose most likely class is their label ``y`` (N,)."""
    _, logits = apply(tree, x)
    return int((logits.argmax(-1).cpu() == y.cpu()).sum()) / len(y)


def train(x: Tensor, y: Tensor, *, seed: int, epochs: int, batch_size: int = 64, lr: float = 1e-3) -> dict:
    """A network trained from ``init`` by Adam on the cross-entropy of labels ``y`` (N,) given images ``x``
    (as ``apply`` takes them), its learning rate ``lr`` decaying down a half cosine to 0 over the run.

    The init and each epoch's batch order come from ``seed``'s streams, so a seed gives the same weights on
    the same machine. No augmentation: flips and shifts would change digits, and the features are meant to
    describe the images as they are.
    """
    x, y = _images(x), y.to(torch.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    tree = init(generator(seed, "features-init"))
    opt = optim.adam(schedules.cosine_decay(lr, epochs * math.ceil(len(x) / batch_size)))
    state = opt.init(tree)
    order = generator(seed, "features-order")
    grad = torch.func.grad(_loss)
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=order).split(batch_size):
            updates, state = opt.update(grad(tree, x[rows], y[rows]), state, tree)
            tree = optim.apply_updates(tree, updates)
    return tree


def load(name: str = "fashion-mnist") -> dict:
    """The trained network ``name`` (one of ``NETWORKS``), read once per process; do not modify it in place.

    "fashion-mnist" is shipped with the package. "mnist" is trained on first use (a few minutes on a CPU)
    and cached in funcvae's data folder (``$FUNCVAE_DATA``) under ``features/``; a cached file that fails
    its recorded SHA-256 (damaged, or written by a run killed before it recorded the SHA-256), or holds
    another network's tensors, is trained and written again, with a warning.

    Raises:
      ValueError: the shipped file fails its SHA-256 (the message names the file).
      FileNotFoundError: MNIST is needed and cannot be found (``funcvae.data.load``'s message).
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown feature network {name!r}; choose from {NETWORKS}")
    return _load(name)


@functools.lru_cache(maxsize=None)
def _load(name: str) -> dict:
    if name == "fashion-mnist":
        return _read(WEIGHTS, SHA256)
    path = data._cache_dir() / "features" / f"{name}.safetensors"
    recorded = _recorded(path)
    if path.is_file() and recorded is not None:
        try:
            return _read(path, recorded)
        except ValueError as e:
            warnings.warn(f"{e}; training it again", stacklevel=3)
    tree = _train_on(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(_sha_path(path), save(tree, path))
    return tree


def save(tree: dict, path: str | os.PathLike) -> str:
    """Write ``tree`` to ``path`` as safetensors (atomically: a crash leaves the old file or none); returns the
    SHA-256 of the file's bytes, hex."""
    path = Path(path)
    files.write(path, dict(paths_and_leaves(tree)), {})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def labelled(name: str, split: str) -> tuple[Tensor, Tensor]:
    """Images (N, 1, 28, 28) in [0, 1] and their labels (N,) int64 of ``funcvae.data``'s set ``name``."""
    return data.load(name, split), data._dataset(name, split == "train", None).targets.to(torch.int64)


def _forward(tree: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 1, 28, 28) -> features (N, 128), logits (N, 10)."""
    h = F.max_pool2d(F.relu(nn.conv(tree["conv_0"], x, stride=1, padding=1)), 2)
    h = F.max_pool2d(F.relu(nn.conv(tree["conv_1"], h, stride=1, padding=1)), 2)
    features = F.relu(nn.dense(tree["hidden"], h.flatten(1)))
    return features, nn.dense(tree["logits"], features)


def _loss(tree: dict, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy (nats per image) of labels ``y`` (B,) given images ``x`` (B, 1, 28, 28)."""
    return F.cross_entropy(_forward(tree, x)[1], y)


def _images(x: Tensor) -> Tensor:
    """(N, 784), (N, 28, 28) or (N, 1, 28, 28) -> (N, 1, 28, 28); ValueError for any other shape."""
    if tuple(x.shape[1:]) not in ((784,), (28, 28), (1, 28, 28)):
        raise ValueError(f"images must be (N, 784), (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    return x.reshape(-1, 1, 28, 28)


def _read(path: Path, sha256: str) -> dict:
    """The params in ``path`` once its bytes match ``sha256`` and its tensors ``init``'s names, shapes, dtypes."""
    if not path.is_file():
        raise FileNotFoundError(f"no feature network at {path}")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"{path} fails its SHA-256: the file is damaged or not the one this funcvae expects")
    flat = safetensors.torch.load(raw)
    want = {k: (t.shape, t.dtype) for k, t in paths_and_leaves(init(torch.Generator()))}
    if {k: (t.shape, t.dtype) for k, t in flat.items()} != want:
        raise ValueError(f"{path} holds tensors {sorted(flat)} of other names, shapes or dtypes than this network's")
    return checkpoint._tree_from_paths(flat, path)


def _train_on(name: str) -> dict:
    """The network trained on ``name``'s 60k training images as the shipped one was."""
    return train(*labelled(name, "train"), seed=SEED, epochs=EPOCHS)


def _sha_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded(path: Path) -> str | None:
    """The SHA-256 recorded beside ``path``, or None when there is none."""
    try:
        return _sha_path(path).read_text().strip()
    except FileNotFoundError:
        return None


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader sees all of it or the old."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
