"""The domain feature network: the shipped weights are the checked ones and classify held-out Fashion-MNIST as
stated; features for every accepted image shape; seeded training; MNIST's network trained once and cached."""

import hashlib
import math

import pytest
import torch
from torchvision import datasets

from funcvae import data
from funcvae.quality import network
from funcvae.rng import generator


@pytest.fixture(autouse=True)
def _fresh_cache():
    # load() keeps each network for the process; tests that move its files must not see another test's.
    network._load.cache_clear()
    yield
    network._load.cache_clear()


@pytest.fixture(scope="module")
def test_set():
    return network.labelled("fashion-mnist", "test")


def _flip_byte(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_shipped_file_is_the_checked_one():
    raw = network.WEIGHTS.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == network.SHA256
    assert len(raw) < 2_000_000


def test_a_damaged_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "fashion-mnist.safetensors"
    copy.write_bytes(network.WEIGHTS.read_bytes())
    _flip_byte(copy, copy.stat().st_size // 2)  # one weight's byte: the file still parses
    monkeypatch.setattr(network, "WEIGHTS", copy)
    with pytest.raises(ValueError, match=f"{copy}.*SHA-256"):
        network.load("fashion-mnist")


def test_held_out_accuracy_is_the_stated_one(test_set):
    acc = network.accuracy(network.load(), *test_set)
    assert acc >= 0.90
    # The stated figure, up to a few of the 10,000 predictions that another CPU's rounding may tip.
    assert acc == pytest.approx(network.ACCURACY, abs=5e-4)


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 28, 28)])
def test_features_for_each_image_shape(test_set, shape):
    x = test_set[0][:7]
    feats, logits = network.apply(network.load(), x.reshape(len(x), *shape))
    ref, _ = network.apply(network.load(), x)
    assert feats.shape == (7, network.FEATURES) and logits.shape == (7, network.CLASSES)
    assert torch.equal(feats, ref) and (feats >= 0).all()


def test_chunks_give_the_batch_result(test_set, monkeypatch):
    x = test_set[0][:10]
    feats, logits = network.apply(network.load(), x)
    monkeypatch.setattr(network, "_CHUNK", 3)
    chunked = network.apply(network.load(), x)
    torch.testing.assert_close(chunked, (feats, logits))
    assert network.apply(network.load(), x[:0])[0].shape == (0, network.FEATURES)


def test_other_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        network.apply(network.load(), torch.zeros(2, 3, 28, 28))


def test_training_is_seeded_and_learns(test_set):
    x, y = network.labelled("fashion-mnist", "train")
    x, y = x[:512], y[:512]
    a = network.train(x, y, seed=3, epochs=1)
    b = network.train(x, y, seed=3, epochs=1)
    c = network.train(x, y, seed=4, epochs=1)
    leaves = lambda t: [t[layer][k] for layer in sorted(t) for k in ("kernel", "bias")]
    assert all(torch.equal(p, q) for p, q in zip(leaves(a), leaves(b), strict=True))
    assert not torch.equal(leaves(a)[0], leaves(c)[0])
    # Eight steps already beat guessing (accuracy 1/10) by far more than five of its standard errors.
    xt, yt = test_set[0][:1000], test_set[1][:1000]
    assert network.accuracy(a, xt, yt) > 0.1 + 5 * math.sqrt(0.1 * 0.9 / len(yt))


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="fashion-mnist"):
        network.load("cifar")


@pytest.mark.skipif(data.DATASETS["mnist"][1].exists(), reason="MNIST is installed: load() would train on it")
def test_mnist_absent_raises_the_data_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCVAE_DATA", str(tmp_path))
    monkeypatch.setattr(datasets.MNIST, "mirrors", [(tmp_path / "nowhere").as_uri() + "/"])  # never online
    with pytest.raises(FileNotFoundError, match="mnist not found in"):
        network.load("mnist")
    assert not (tmp_path / "features").exists()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """The MNIST network's cache in ``tmp_path``, its trainer a quick fake that counts its calls."""
    calls = []

    def fake_train(name):
        calls.append(name)
        return network.init(generator(len(calls), "fake"))

    monkeypatch.setenv("FUNCVAE_DATA", str(tmp_path))
    monkeypatch.setattr(network, "_train_on", fake_train)
    return tmp_path / "features" / "mnist.safetensors", calls


def _same(a, b):
    return all(torch.equal(a[layer][k], b[layer][k]) for layer in a for k in a[layer])


def test_mnist_is_trained_once_then_read(fake_mnist):
    path, calls = fake_mnist
    first = network.load("mnist")
    assert calls == ["mnist"] and path.is_file()
    recorded = (path.parent / "mnist.safetensors.sha256").read_text().strip()
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()
    assert network.load("mnist") is first  # kept in the process
    network._load.cache_clear()
    assert _same(network.load("mnist"), first) and calls == ["mnist"]  # read back, not trained


def test_a_damaged_cache_is_trained_again(fake_mnist):
    path, calls = fake_mnist
    network.load("mnist")
    _flip_byte(path, path.stat().st_size // 2)
    network._load.cache_clear()
    with pytest.warns(UserWarning, match=f"{path}.*SHA-256.*training it again"):
        again = network.load("mnist")
    assert len(calls) == 2
    network._load.cache_clear()
    assert _same(network.load("mnist"), again) and len(calls) == 2  # the new file is recorded and read


def test_a_cache_of_another_network_is_trained_again(fake_mnist):
    path, calls = fake_mnist
    path.parent.mkdir(parents=True)
    sha = network.save({"hidden": {"kernel": torch.zeros(3, 4), "bias": torch.zeros(3)}}, path)
    (path.parent / "mnist.safetensors.sha256").write_text(sha)
    with pytest.warns(UserWarning, match="other names, shapes or dtypes"):
        network.load("mnist")
    assert calls == ["mnist"]


def test_a_missing_record_is_trained_again(fake_mnist):
    path, calls = fake_mnist
    network.load("mnist")
    (path.parent / "mnist.safetensors.sha256").unlink()
    network._load.cache_clear()
    network.load("mnist")
    assert len(calls) == 2


def test_a_large_sets_features_are_kept_and_read_back_exactly_and_a_damaged_file_is_redone(fashion, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setenv("FUNCVAE_DATA", str(tmp_path))
    monkeypatch.setattr(network, "KEPT_FROM", 100)
    x = fashion[1][:100]
    want = network.apply(network.load("fashion-mnist"), x)
    first = network.features("fashion-mnist", x)
    (kept,) = (tmp_path / "features" / "kept").iterdir()
    monkeypatch.setattr(network, "apply", lambda tree, x: pytest.fail("computed again"))
    second = network.features("fashion-mnist", x)
    for got in (first, second):
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    kept.write_bytes(kept.read_bytes()[:-8] + bytes(8))  # damaged: its checksum fails
    monkeypatch.undo()
    monkeypatch.setenv("FUNCVAE_DATA", str(tmp_path))
    monkeypatch.setattr(network, "KEPT_FROM", 100)
    assert all(torch.equal(a, b) for a, b in zip(network.features("fashion-mnist", x), want))
    assert network.features("fashion-mnist", x[:99])[0].shape == (99, 128)  # below KEPT_FROM: nothing kept
    assert len(list((tmp_path / "features" / "kept").iterdir())) == 1
