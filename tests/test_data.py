"""funcvae.data.load: real Fashion-MNIST from the Debian package, tiny IDX files written here, the offline
error, and argument checks. Every test points $FUNCVAE_DATA at a temporary folder, so no cache leaks out."""

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

import funcvae

SYSTEM = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
needs_system_data = pytest.mark.skipif(
    not all((SYSTEM / f"{f}.gz").is_file() for f in IDX_FILES),
    reason="needs `apt-get install dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist)")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """This test's own unpack cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FUNCVAE_DATA", str(folder))
    return folder


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """{"train", "test"}: the real Fashion-MNIST splits, loaded once through a temporary cache."""
    if not SYSTEM.is_dir():
        pytest.skip("needs `apt-get install dataset-fashion-mnist`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUNCVAE_DATA", str(tmp_path_factory.mktemp("real-cache")))
        return {split: funcvae.data.load("fashion-mnist", split) for split in ("train", "test")}


def write_idx(folder: Path, *, n_train=5, n_test=3, gz=True, seed=0) -> dict:
    """Write the four IDX files of a tiny data set into ``folder``; return its pixels {"train", "test"} as uint8."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # both ends of the grey scale
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes()}
        for name, blob in blobs.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
        pixels[split] = images
    return pixels


def as_loaded(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).unsqueeze(1).to(torch.float32) / 255


@needs_system_data
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_split_shape_range_and_content(real, split, n):
    x = real[split]
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.round(x * 255) / 255, x)  # whole grey levels / 255
    assert float(x.std()) > 0.1  # not blank
    assert bool((x.flatten(1).amax(1) > 0).all())  # no all-zero image
    assert 0.2 < float(x.mean()) < 0.4


@needs_system_data
def test_real_splits_are_different_images(real):
    train, test = real["train"], real["test"]
    assert not torch.equal(train[:100], test[:100])


@needs_system_data
def test_static_binarisation_is_a_seeded_bernoulli_draw_of_the_grey_levels(real):
    grey = real["test"]
    a, b, c = (funcvae.data.load("fashion-mnist", "test", binarize="static", seed=s) for s in (0, 0, 1))
    assert a.shape == grey.shape and a.dtype == torch.float32
    assert set(torch.unique(a).tolist()) == {0.0, 1.0}
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool((a[grey == 0] == 0).all()) and bool((a[grey == 1] == 1).all())
    # Each pixel is Bernoulli(grey): the mean of the draw is within 5 standard errors of the grey mean.
    p = grey.double()
    se = math.sqrt(float((p * (1 - p)).sum())) / p.numel()
    for draw in (a, c):
        assert abs(float(draw.double().mean()) - float(p.mean())) < 5 * se
    # The two draws are independent: they disagree on about sum 2p(1-p) pixels.
    disagree = float((a != c).double().sum())
    expected = float((2 * p * (1 - p)).sum())
    assert abs(disagree - expected) < 5 * math.sqrt(expected)


@pytest.mark.parametrize("name,class_name", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
@pytest.mark.parametrize("layout", ["gzipped", "plain", "torchvision"])
def test_root_folder_gives_exactly_its_pixels(tmp_path, cache, name, class_name, layout):
    root = tmp_path / "data"
    folder = root / class_name / "raw" if layout == "torchvision" else root
    pixels = write_idx(folder, gz=layout == "gzipped")
    for split, n in (("train", 5), ("test", 3)):
        x = funcvae.data.load(name, split, root=root)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, as_loaded(pixels[split]))
    if layout == "torchvision":  # read in place
        assert not cache.exists()
    else:  # unpacked once into the test's cache, nowhere else
        (raw,) = (cache / "staged").glob(f"*/{class_name}/raw")  # one folder for this one source
        assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(IDX_FILES)


def test_root_static_binarisation_draws_from_its_pixels(tmp_path):
    pixels = write_idx(tmp_path / "data")
    grey = as_loaded(pixels["train"])
    draw = funcvae.data.load("fashion-mnist", "train", root=tmp_path / "data", binarize="static", seed=3)
    assert set(torch.unique(draw).tolist()) <= {0.0, 1.0}
    assert bool((draw[grey == 0] == 0).all()) and bool((draw[grey == 1] == 1).all())


def test_root_pixels_as_uint8_are_its_levels_and_the_same_draw(tmp_path):
    pixels, root = write_idx(tmp_path / "data"), tmp_path / "data"
    for split in ("train", "test"):
        levels = funcvae.data.load("fashion-mnist", split, root=root, pixels="uint8")
        assert levels.dtype == torch.uint8 and torch.equal(levels, torch.from_numpy(pixels[split]).unsqueeze(1))
        # What fit makes of them at scale=255 is the float32 images, bit for bit.
        assert torch.equal((levels.to(torch.float64) / 255).to(torch.float32), funcvae.data.load("fashion-mnist", split,
                                                                                                  root=root))
    levels, floats = (funcvae.data.load("fashion-mnist", "train", root=root, binarize="static", seed=3, pixels=p)
                      for p in ("uint8", "float32"))
    assert levels.dtype == torch.uint8 and torch.equal(levels.to(torch.float32), floats)


def test_root_is_staged_again_when_its_files_change(tmp_path):
    root = tmp_path / "data"
    write_idx(root, seed=0)
    first = funcvae.data.load("fashion-mnist", "test", root=root)
    pixels = write_idx(root, n_test=4, seed=1)
    later = os.stat(root / "t10k-images-idx3-ubyte.gz").st_mtime + 10  # coarse file-system clocks
    for f in IDX_FILES:
        os.utime(root / f"{f}.gz", (later, later))
    second = funcvae.data.load("fashion-mnist", "test", root=root)
    assert first.shape[0] == 3 and torch.equal(second, as_loaded(pixels["test"]))


def test_a_second_folder_is_not_shadowed_by_the_cache(tmp_path):
    write_idx(tmp_path / "a", seed=0)
    funcvae.data.load("fashion-mnist", "train", root=tmp_path / "a")
    pixels = write_idx(tmp_path / "b", n_train=4, seed=1)
    for f in IDX_FILES:  # as after `cp -p` or unpacking an archive: files older than the cache
        os.utime(tmp_path / "b" / f"{f}.gz", (1e9, 1e9))
    assert torch.equal(funcvae.data.load("fashion-mnist", "train", root=tmp_path / "b"), as_loaded(pixels["train"]))


def test_torchvision_layout_with_gzipped_files(tmp_path):
    pixels = write_idx(tmp_path / "data" / "FashionMNIST" / "raw", gz=True)
    assert torch.equal(funcvae.data.load("fashion-mnist", "test", root=tmp_path / "data"), as_loaded(pixels["test"]))


class OfflineFashionMNIST(datasets.FashionMNIST):
    """torchvision's class as on a machine without a network: the download raises."""

    attempts: list = []

    def __init__(self, root, train=True, download=False, **kwargs):
        if download:
            type(self).attempts.append(str(root))
            raise RuntimeError("no network in this test")
        super().__init__(root, train=train, download=download, **kwargs)


@pytest.mark.parametrize("name,hint", [("fashion-mnist", "apt-get install dataset-fashion-mnist"), ("mnist", None)])
@pytest.mark.parametrize("with_root", [False, True], ids=["no-root", "empty-root"])
def test_offline_with_nothing_found_says_where_it_looked(tmp_path, cache, monkeypatch, name, hint, with_root):
    system = tmp_path / "no-such-system-folder"
    root = tmp_path / "empty-root"
    root.mkdir()
    monkeypatch.setitem(funcvae.data.DATASETS, name, (OfflineFashionMNIST, system))
    monkeypatch.setattr(OfflineFashionMNIST, "attempts", [])
    with pytest.raises(FileNotFoundError) as info:
        funcvae.data.load(name, "train", root=root if with_root else None)
    message = str(info.value)
    assert str(system) in message
    assert (str(root) in message) == with_root
    assert "no network in this test" in message  # the download's own reason
    assert "train-images-idx3-ubyte" in message and "root=" in message  # how to get the data
    if hint:
        assert hint in message
    else:
        assert "apt-get" not in message
    assert isinstance(info.value.__cause__, RuntimeError)
    assert OfflineFashionMNIST.attempts == [str(root if with_root else cache)]


@pytest.mark.parametrize("args,message", [
    (("cifar10", "train"), r"unknown dataset 'cifar10'; choose from \('mnist', 'fashion-mnist', 'shapes'\)"),
    (("Fashion-MNIST", "train"), "unknown dataset 'Fashion-MNIST'"),
    (("fashion-mnist", "val"), r"split must be one of \('train', 'test'\), got 'val'"),
    (("fashion-mnist", True), r"split must be one of \('train', 'test'\), got True"),
    (("fashion-mnist", "train", None, "dynamic"), r"binarize must be one of \(None, 'static'\), got 'dynamic' "
                                                  r"\(dynamic binarisation is fit\(\.\.\., binarize='dynamic'\)\)"),
    (("fashion-mnist", "train", None, "yes"), r"binarize must be one of \(None, 'static'\), got 'yes'$"),
    (("fashion-mnist", "train", None, None, 0, "float64"),
     r"pixels must be one of \('float32', 'uint8'\), got 'float64'"),
])
def test_bad_arguments_fail_before_touching_disk(monkeypatch, args, message):
    def forbidden(*a, **k):
        raise AssertionError("looked for files before checking the arguments")

    monkeypatch.setattr(funcvae.data, "_dataset", forbidden)
    with pytest.raises(ValueError, match=message):
        funcvae.data.load(*args)
