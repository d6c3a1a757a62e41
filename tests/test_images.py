"""Images of one's own: a folder decoded by PIL (ImageFolder's layout, labels and order, or a flat folder),
sizes and modes made one or refused naming two files, bad files named, .npy / .npz files, the memory-mapped
cache reused while its folder is unchanged and rebuilt when it changes."""

import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import funcvae
from funcvae import images


def pixels(h, w, c=3, seed=0) -> np.ndarray:
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def as_chw(path, mode="RGB") -> np.ndarray:
    """What a file should read as: PIL's own decoding, (C, H, W)."""
    a = np.asarray(Image.open(path).convert(mode))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@pytest.fixture
def classes(tmp_path):
    """ImageFolder's layout: three classes (one with a nested folder), a README and a CSV beside the images."""
    root = tmp_path / "tree"
    for k, name in enumerate(["dog", "cat", "bird"]):
        for i in range(2 + k):
            save(root / name / f"{i}.png", pixels(6, 4, seed=10 * k + i))
    save(root / "cat" / "more" / "z.jpg", pixels(6, 4, seed=99))
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "dog" / "labels.csv").write_text("0,1\n")
    return root


def test_class_folders_match_image_folder(classes):
    x, y = funcvae.data.folder(classes, labels=True)
    reference = ImageFolder(str(classes))
    assert x.dtype == torch.uint8 and x.shape == (len(reference), 3, 6, 4)
    assert y.dtype == torch.int64 and y.tolist() == reference.targets
    for i, (image, _) in enumerate(reference):
        assert np.array_equal(x[i].numpy(), np.asarray(image).transpose(2, 0, 1))
    assert torch.equal(funcvae.data.folder(classes), x)  # labels=False: the same images


def test_flat_folder_in_name_order(tmp_path):
    names = ["b.png", "a.bmp", "c.png"]
    paths = [save(tmp_path / name, pixels(5, 7, c=1, seed=i), "L") for i, name in enumerate(names)]
    (tmp_path / "notes.txt").write_text("skipped")
    x = funcvae.data.folder(tmp_path)
    assert x.shape == (3, 1, 5, 7)
    for i, path in enumerate(sorted(paths)):
        assert np.array_equal(x[i].numpy(), as_chw(path, "L"))
    with pytest.raises(ValueError, match="no class folders"):
        funcvae.data.folder(tmp_path, labels=True)


def test_mixed_sizes_named_or_resized(tmp_path):
    a, b = save(tmp_path / "a.png", pixels(8, 8)), save(tmp_path / "b.png", pixels(6, 10))
    with pytest.raises(ValueError, match=r"a\.png is 8x8 and .*b\.png is 6x10 .*size="):
        funcvae.data.folder(tmp_path)
    x = funcvae.data.folder(tmp_path, size=(4, 5))
    assert x.shape == (2, 3, 4, 5)
    expected = np.asarray(Image.open(b).resize((5, 4), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(x[1].numpy(), expected)
    assert funcvae.data.folder(tmp_path, size=8).shape == (2, 3, 8, 8)
    assert np.array_equal(funcvae.data.folder(tmp_path, size=8)[0].numpy(), as_chw(a))  # its size: untouched


def test_mixed_modes_named_or_converted(tmp_path):
    grey, colour = save(tmp_path / "a.png", pixels(4, 4, c=1), "L"), save(tmp_path / "b.png", pixels(4, 4, seed=1))
    with pytest.raises(ValueError, match=r"a\.png reads as mode L and .*b\.png as RGB; pass mode="):
        funcvae.data.folder(tmp_path)
    x = funcvae.data.folder(tmp_path, mode="L")
    assert x.shape == (2, 1, 4, 4) and np.array_equal(x[1].numpy(), as_chw(colour, "L"))
    x = funcvae.data.folder(tmp_path, mode="RGB")
    assert x.shape == (2, 3, 4, 4) and np.array_equal(x[0].numpy(), as_chw(grey, "RGB"))


@pytest.mark.parametrize("mode, channels, same_as", [("P", 3, "RGB"), ("1", 1, "L"), ("RGBA", 4, "RGBA"),
                                                     ("LA", 2, "LA"), ("CMYK", 3, "RGB")])
def test_each_mode_reads_as_8_bit_levels(tmp_path, mode, channels, same_as):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = save(tmp_path / f"a{suffix}", pixels(4, 6, c=4 if mode in ("RGBA", "CMYK") else 3), mode)
    x = funcvae.data.folder(tmp_path)
    assert x.shape == (1, channels, 4, 6) and np.array_equal(x[0].numpy(), as_chw(path, same_as))


def test_palette_with_transparency_keeps_alpha(tmp_path):
    image = Image.fromarray(pixels(4, 4)).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "a.png")
    assert funcvae.data.folder(tmp_path).shape == (1, 4, 4, 4)
    assert funcvae.data.folder(tmp_path, mode="RGB").shape == (1, 3, 4, 4)


def test_16_bit_images_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(tmp_path / "deep.png")
    for mode in (None, "L"):  # PIL would clip the levels to 255
        with pytest.raises(ValueError, match=r"deep\.png has 16- or 32-bit pixels"):
            funcvae.data.folder(tmp_path, mode=mode)


def test_a_bad_file_is_named(tmp_path):
    save(tmp_path / "a.png", pixels(8, 8))
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"b\.png is not an image PIL can read"):
        funcvae.data.folder(tmp_path)
    full = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(full[:len(full) // 2])  # a good header, half the pixels
    with pytest.raises(ValueError, match=r"b\.png could not be decoded"):
        funcvae.data.folder(tmp_path)


def test_folders_without_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        funcvae.data.folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"holds no image files .*\(it is empty\)"):
        funcvae.data.folder(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"holds no image files .*notes\.txt\) are not"):
        funcvae.data.folder(tmp_path)
    save(tmp_path / "cat" / "a.png", pixels(4, 4))
    (tmp_path / "dog").mkdir()
    with pytest.raises(ValueError, match="class folders dog hold no image files"):
        funcvae.data.folder(tmp_path)
    save(tmp_path / "top.png", pixels(4, 4))
    with pytest.raises(ValueError, match=r"both image files \(top\.png\) and folders \(cat/\)"):
        funcvae.data.folder(tmp_path)


@pytest.mark.parametrize("options, message", [(dict(size=0), "size must be"), (dict(size=(4, 4, 3)), "size must be"),
                                              (dict(size=True), "size must be"), (dict(mode="CMYK"), "mode must be"),
                                              (dict(cache="x.dat"), "cache must be a .npy")])
def test_bad_options_refused_before_reading(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        funcvae.data.folder(tmp_path / "missing", **options)


def test_npy_memory_mapped(tmp_path):
    x = pixels(5, 4)
    np.save(tmp_path / "x.npy", x)
    mapped = funcvae.data.array(tmp_path / "x.npy")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable and np.array_equal(mapped, x)
    whole = funcvae.data.array(tmp_path / "x.npy", mmap=False)
    assert not isinstance(whole, np.memmap) and np.array_equal(whole, x)
    with pytest.raises(ValueError, match="no labels"):
        funcvae.data.array(tmp_path / "x.npy", labels=True)
    with pytest.raises(ValueError, match="expected a .npy or .npz"):
        funcvae.data.array(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        funcvae.data.array(tmp_path / "y.npy")
    np.save(tmp_path / "objects.npy", np.array([{}, 1], dtype=object))
    with pytest.raises(ValueError, match=r"objects\.npy could not be read .*Python objects"):
        funcvae.data.array(tmp_path / "objects.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"bad\.npy could not be read"):
        funcvae.data.array(tmp_path / "bad.npy")


def test_npz_keys(tmp_path):
    x, y = pixels(6, 2, 2), np.array([1, 0, 2, 2, 1, 0])
    np.savez(tmp_path / "one.npz", x)
    assert np.array_equal(funcvae.data.array(tmp_path / "one.npz"), x)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    assert np.array_equal(funcvae.data.array(tmp_path / "xy.npz"), x)
    images_, labels = funcvae.data.array(tmp_path / "xy.npz", labels=True)
    assert np.array_equal(images_, x) and labels.dtype == torch.int64 and labels.tolist() == y.tolist()
    np.savez(tmp_path / "named.npz", images=x, labels=y)
    assert funcvae.data.array(tmp_path / "named.npz", labels=True)[1].tolist() == y.tolist()
    np.savez(tmp_path / "both.npz", x=x, images=x)
    with pytest.raises(ValueError, match=r"arrays 'x', 'images', both of 'x' and 'images'"):
        funcvae.data.array(tmp_path / "both.npz")
    np.savez(tmp_path / "other.npz", a=x, b=y)
    with pytest.raises(ValueError, match=r"arrays 'a', 'b', neither of 'x' and 'images'"):
        funcvae.data.array(tmp_path / "other.npz")
    np.savez(tmp_path / "unlabelled.npz", x=x)
    with pytest.raises(ValueError, match=r"neither of 'y' and 'labels'"):
        funcvae.data.array(tmp_path / "unlabelled.npz", labels=True)
    np.savez(tmp_path / "short.npz", x=x, y=y[:3])
    with pytest.raises(ValueError, match=r"labels must be \(6,\) integers"):
        funcvae.data.array(tmp_path / "short.npz", labels=True)


def test_cache_reused_while_fresh(classes, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "tree.npy"
    x, y = funcvae.data.folder(classes, labels=True, cache=cache)
    assert isinstance(x, np.memmap) and not x.flags.writeable
    assert np.array_equal(x, funcvae.data.folder(classes).numpy()) and y.tolist() == ImageFolder(str(classes)).targets
    assert sorted(os.listdir(cache.parent)) == ["tree.npy", "tree.npy.source.json"]  # no temporary file left
    monkeypatch.setattr(images, "_decode", lambda *a: pytest.fail("a fresh cache was decoded again"))
    again, y_again = funcvae.data.folder(classes, labels=True, cache=cache)
    assert np.array_equal(again, x) and torch.equal(y_again, y)


def test_cache_rebuilt_when_stale(classes, tmp_path):
    cache = tmp_path / "tree.npy"
    n = funcvae.data.folder(classes, cache=cache).shape[0]
    changed = save(classes / "bird" / "0.png", pixels(6, 4, seed=123))
    os.utime(changed, ns=(1, 1))  # another modification time, whatever the clock's resolution
    x = funcvae.data.folder(classes, cache=cache)
    assert np.array_equal(x[0], as_chw(changed))  # bird/0.png: the first class's first image
    save(classes / "dog" / "9.png", pixels(6, 4, seed=7))
    assert funcvae.data.folder(classes, cache=cache).shape[0] == n + 1
    assert funcvae.data.folder(classes, mode="L", cache=cache).shape == (n + 1, 1, 6, 4)  # other options
    np.save(cache, np.zeros((1, 1, 1, 1), np.uint8))  # another file put in its place
    assert funcvae.data.folder(classes, mode="L", cache=cache).shape == (n + 1, 1, 6, 4)


def test_failed_cache_build_leaves_nothing(tmp_path):
    save(tmp_path / "src" / "a.png", pixels(8, 8))
    full = (tmp_path / "src" / "a.png").read_bytes()
    (tmp_path / "src" / "b.png").write_bytes(full[:len(full) // 2])
    with pytest.raises(ValueError, match="could not be decoded"):
        funcvae.data.folder(tmp_path / "src", cache=tmp_path / "out" / "c.npy")
    assert os.listdir(tmp_path / "out") == []


def test_sha256_streams_in_chunks(tmp_path, monkeypatch):
    x = pixels(7, 5)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(images, "_CHUNK_BYTES", 30)  # two rows at a time
    expected = hashlib.sha256(x.tobytes()).hexdigest()
    assert images.sha256(np.load(tmp_path / "x.npy", mmap_mode="r")) == expected
    assert images.sha256(torch.from_numpy(x)) == expected
    assert images.sha256(np.asfortranarray(x)) == expected
