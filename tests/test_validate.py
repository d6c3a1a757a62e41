"""Boundary checks through the public API: every bad input to fit, elbo, encode and decode fails before any
work with an error that names the problem, and every accepted container gives exactly the same numbers."""

import importlib
import math
import re

import numpy as np
import optree
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import funcvae

SMALL = dict(hidden=(8,), latent=3)
N = 6
TRAIN = importlib.import_module("funcvae.train")
LOOP = importlib.import_module("funcvae._train.loop")
ELBO = importlib.import_module("funcvae.bounds")
OBJECTIVES = importlib.import_module("funcvae.objectives")


def run_fit(params, data, **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 2)
    kw.setdefault("compile", False)
    return funcvae.fit(params, data, progress=False, **kw)


def run_elbo(params, data, **kw):
    return funcvae.elbo(params, data, seed=0, **kw)


def run_encode(params, data, **kw):
    return funcvae.encode(params, data, **kw)


# (entry point, the name its errors give the data)
DATA_ENTRIES = [
    pytest.param(run_fit, "data", id="fit"),
    pytest.param(run_elbo, "data", id="elbo"),
    pytest.param(run_encode, "x", id="encode"),
]


def images(n=N, seed=0):
    """(n, 1, 28, 28) float32 grey levels in [0, 1]."""
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def params():
    return funcvae.init(seed=0, **SMALL)


@pytest.fixture
def no_work(monkeypatch):
    """Every place where real work starts raises AssertionError, so a check that runs too late shows up."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the input was validated")

    # Building fit's step, scoring held-out data, the ELBO's batches, and any run of a model on data (the
    # model check runs the user's encode and decode on one example, not these).
    for owner, name in [(TRAIN, "make_train_step"), (LOOP, "evaluate"), (ELBO, "evaluate"),
                        (OBJECTIVES, "batch_terms"), (funcvae.Model, "encode_one"), (funcvae.Model, "decode_one")]:
        monkeypatch.setattr(owner, name, forbidden)


@pytest.mark.parametrize("entry", [run_fit, run_elbo, run_encode, lambda p, x: funcvae.decode(p, torch.zeros(2, 3))],
                         ids=["fit", "elbo", "encode", "decode"])
def test_no_work_fixture_catches_work(params, no_work, entry):
    # The guard used below is real: a valid call trips it.
    with pytest.raises(AssertionError, match="work started"):
        entry(params, images())


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("shape", [(N, 783), (N, 3, 28, 28), (N, 32, 32), (784,), (N, 1, 28, 27), (2, N, 1, 28, 28)],
                         ids=["flat-783", "3-channels", "32x32", "1-D", "28x27", "5-D"])
def test_wrong_shape_is_rejected(params, no_work, entry, name, shape):
    with pytest.raises(ValueError, match=rf"^{name} has shape {re.escape(str(shape))}; .*1x28x28"):
        entry(params, torch.rand(shape))


def test_three_channel_params_reject_unchannelled_images(no_work):
    params = funcvae.init(seed=0, arch="conv", input_shape=(3, 8, 8), channels=(2,), **SMALL)
    with pytest.raises(ValueError, match=r"has shape \(4, 8, 8\); params built for 3x8x8 inputs take \(N, 192\) or "
                                         r"\(N, 3, 8, 8\)$"):
        funcvae.encode(params, torch.rand(4, 8, 8))


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("dtype,lo,hi", [(torch.uint8, 0, 255), (torch.int64, -1, 1), (torch.int32, 0, 2)])
def test_integer_data_outside_unit_interval_needs_scale(params, no_work, entry, name, dtype, lo, hi):
    x = torch.full((N, 784), lo, dtype=dtype)
    x[0, 0] = hi
    with pytest.raises(ValueError, match=rf"^{name} is integer .* values in \[{lo}, {hi}\], outside \[0, 1\]; "
                                         r"state the scale, e\.g\. scale=255"):
        entry(params, x)


@pytest.mark.parametrize("entry", [run_fit, run_elbo, run_encode], ids=["fit", "elbo", "encode"])
@pytest.mark.parametrize("scale", [0, -255, math.nan, math.inf, True, "255"])
def test_bad_scale_is_rejected(params, no_work, entry, scale):
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        entry(params, (images() * 255).to(torch.uint8), scale=scale)


def test_scaled_integer_pixels_equal_float_pixels(params):
    pixels = torch.randint(0, 256, (N, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    pixels[0, 0, 0, :2] = torch.tensor([0, 255])  # both ends of the range
    as_float = pixels.to(torch.float32) / 255
    for got, want in [(run_elbo(params, pixels, scale=255), run_elbo(params, as_float)),
                      (run_elbo(params, pixels.numpy(), scale=255.0), run_elbo(params, as_float))]:
        assert all(torch.equal(got[k], want[k]) for k in want)
    for a, b in zip(funcvae.encode(params, pixels, scale=255), funcvae.encode(params, as_float)):
        assert torch.equal(a, b)
    a, b = (funcvae.leaves_by_path(run_fit(params, data, scale=s, seed=3)[0])
            for data, s in ((pixels, 255), (as_float, None)))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_data_in_zero_one_is_accepted_as_is(params, dtype):
    binary = images() > 0.5
    got, want = run_elbo(params, binary.to(dtype)), run_elbo(params, binary.to(torch.float32))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert torch.isfinite(got["loss"]).all()


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensor", "numpy"])
def test_nan_and_inf_are_rejected(no_work, entry, name, value, likelihood, as_numpy):
    params = funcvae.init(seed=0, likelihood=likelihood, **SMALL)
    x = images()
    x[2, 0, 5, 7] = value
    with pytest.raises(ValueError, match=rf"^{name} holds 1 NaN or Inf values \(first at index \(2, 147\)\)"):
        entry(params, x.numpy() if as_numpy else x)


class ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("data,what", [
    (torch.zeros(0, 784), r"is empty \(shape \(0, 784\)\)"),
    (torch.zeros(0, 1, 28, 28), r"is empty \(shape \(0, 1, 28, 28\)\)"),
    (np.zeros((0, 28, 28), np.float32), r"is empty \(shape \(0, 28, 28\)\)"),
    (TensorDataset(torch.zeros(0, 784)), "is an empty Dataset"),
    (ListDataset([]), "is an empty Dataset"),
    (DataLoader(TensorDataset(torch.zeros(0, 784), torch.zeros(0)), batch_size=4), "is an empty DataLoader"),
], ids=["tensor-flat", "tensor-image", "numpy", "TensorDataset", "Dataset", "DataLoader"])
def test_empty_data_is_rejected(params, no_work, entry, name, data, what):
    with pytest.raises(ValueError, match=rf"^{name} {what}"):
        entry(params, data)


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("value", [1.5, -0.25, 255.0])
def test_bernoulli_rejects_floats_outside_unit_interval(params, no_work, entry, name, value):
    x = images()
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # so the reported range is [min(value, 0), max(value, 1)]
    x[1, 0, 0, 0] = value
    lo, hi = min(value, 0.0), max(value, 1.0)
    with pytest.raises(ValueError, match=rf"^{name} has values in \[{lo:g}, {hi:g}\], outside \[0, 1\], the support "
                                         r"of the Bernoulli likelihood; pass scale=.* or use likelihood='gaussian'"):
        entry(params, x)


@pytest.mark.parametrize("obs_std", [None, 0.5])
def test_gaussian_accepts_floats_outside_unit_interval(obs_std):
    params = funcvae.init(seed=0, likelihood="gaussian", obs_std=obs_std, **SMALL)
    x = images() * 4.0 - 1.5  # in [-1.5, 2.5]
    assert torch.isfinite(run_elbo(params, x)["loss"]).all()
    assert torch.isfinite(funcvae.encode(params, x)[0]).all()
    trained, history = run_fit(params, x, val_data=x[:3])
    assert math.isfinite(history[0]["loss"]) and math.isfinite(history[0]["val_loss"])
    assert not torch.equal(trained.tree["encoder"]["mean"]["kernel"], params.tree["encoder"]["mean"]["kernel"])


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_data_is_rejected(params, no_work, entry, name, dtype):
    with pytest.raises(TypeError, match=rf"^{name} has complex dtype torch\.{str(dtype)[6:]}; expected real"):
        entry(params, images().to(dtype))


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("data,what", [
    ([[0.0] * 784] * N, "got list"),
    (tuple(images()), "got tuple"),
    ({"x": images()}, "got dict"),
    (0.5, "got float"),
    (np.array([[0.5] * 784] * N, dtype=object), "numpy array of Python objects"),
], ids=["list", "tuple", "dict", "float", "object-array"])
def test_unsupported_container_is_rejected(params, no_work, entry, name, data, what):
    with pytest.raises(TypeError, match=rf"^{name} .*{what}"):
        entry(params, data)


def test_batch_size_larger_than_the_data_is_rejected(params, no_work):
    with pytest.raises(ValueError, match=rf"^batch_size {N + 1} is larger than the data \({N} examples\)"):
        run_fit(params, images(), batch_size=N + 1)


def test_batch_size_equal_to_the_data_is_accepted(params):
    _, history = run_fit(params, images(), batch_size=N)
    assert [h["epoch"] for h in history] == [1]


@pytest.mark.parametrize("setting,value,message", [
    ("epochs", 0, "epochs must be an int >= 1, got 0"),
    ("epochs", 1.0, "epochs must be an int >= 1, got 1.0"),
    ("epochs", True, "epochs must be an int >= 1, got True"),
    ("batch_size", 0, "batch_size must be an int >= 1, got 0"),
    ("batch_size", -2, "batch_size must be an int >= 1, got -2"),
    ("beta", -1.0, "beta must be a finite number >= 0, got -1.0"),
    ("beta", math.nan, "beta must be a finite number >= 0, got nan"),
    ("beta", math.inf, "beta must be a finite number >= 0, got inf"),
    ("kl_warmup", -1, "kl_warmup must be a finite number >= 0, got -1"),
    ("kl_warmup", math.nan, "kl_warmup must be a finite number >= 0, got nan"),
    ("binarize", "static", r"binarize must be one of .*static binarisation is a data\.load option\), got 'static'"),
    ("binarize", "yes", "binarize must be one of"),
    ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
    ("lr", -1e-3, "lr must be a finite number > 0"),
    ("lr", math.nan, "lr must be a finite number > 0, got nan"),
    ("seed", -1, "seed must be an int >= 0, got -1"),
])
def test_bad_fit_settings_are_rejected(params, no_work, setting, value, message):
    with pytest.raises(ValueError, match=message):
        run_fit(params, images(), **{setting: value})


@pytest.mark.parametrize("setting,value,message", [
    ("k", 0, "k must be an int >= 1, got 0"),
    ("k", 1.0, "k must be an int >= 1, got 1.0"),
    ("chunk_size", 0, "chunk_size must be an int >= 1, got 0"),
    ("seed", -1, "seed must be non-negative, got -1"),
])
def test_bad_elbo_settings_are_rejected(params, no_work, setting, value, message):
    with pytest.raises(ValueError, match=message):
        funcvae.elbo(params, images(), **{"seed": 0, setting: value})


def with_leaf(params, path, value=None, *, drop=False):
    """A copy of ``params`` whose leaf at ``path`` is ``value`` (or removed when ``drop``)."""
    tree = optree.tree_map(lambda t: t, params.tree)  # new dicts, same tensors
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
        node = node[key]
    if drop:
        del node[leaf]
    else:
        node[leaf] = value
    return funcvae.Params(params.model, tree)


def decode_some(params, x):
    return funcvae.decode(params, torch.zeros(2, 3))


PARAM_ENTRIES = [run_fit, run_elbo, run_encode, decode_some]
PARAM_IDS = ["fit", "elbo", "encode", "decode"]


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
@pytest.mark.parametrize("bad", ["tree", "dict", "none"])
def test_params_must_be_params(params, no_work, entry, bad):
    given = {"tree": params.tree, "dict": {"model": params.model, "tree": params.tree}, "none": None}[bad]
    kind = {"tree": "dict", "dict": "dict", "none": "NoneType"}[bad]
    with pytest.raises(TypeError, match=rf"expected funcvae Params \(as returned by model\.init or funcvae\.init\), "
                                        rf"got {kind}"):
        entry(given, images())


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
@pytest.mark.parametrize("path", ["encoder/mean/kernel", "decoder/out/bias"])
@pytest.mark.parametrize("fault", ["missing", "extra", "shape", "integer", "nan", "inf"])
def test_mismatched_params_name_the_leaf(params, no_work, entry, path, fault):
    leaf = funcvae.leaves_by_path(params)[path]
    shape = tuple(leaf.shape)
    bad, error, message = {
        "missing": (with_leaf(params, path, drop=True), ValueError, rf"missing \['{path}'\], unexpected \[\]"),
        "extra": (with_leaf(params, path + "_extra", leaf), ValueError,
                  rf"missing \[\], unexpected \['{path}_extra'\]"),
        "shape": (with_leaf(params, path, leaf[..., :-1]), ValueError,
                  rf"param {path} has shape {re.escape(str(shape[:-1] + (shape[-1] - 1,)))}, "
                  rf"expected {re.escape(str(shape))}"),
        "integer": (with_leaf(params, path, leaf.to(torch.int64)), TypeError,
                    rf"param {path} must be a floating-point tensor, got dtype torch\.int64"),
        "nan": (with_leaf(params, path, leaf.index_fill(-1, torch.tensor([0]), math.nan)), ValueError,
                rf"param {path} holds NaN or Inf"),
        "inf": (with_leaf(params, path, leaf.index_fill(-1, torch.tensor([0]), -math.inf)), ValueError,
                rf"param {path} holds NaN or Inf"),
    }[fault]
    with pytest.raises(error, match=message):
        entry(bad, images())


def test_params_leaf_that_is_a_number_is_rejected(params, no_work):
    with pytest.raises(TypeError, match=r"param encoder/mean/bias must be a floating-point tensor, got .*float"):
        run_elbo(with_leaf(params, "encoder/mean/bias", 0.0), images())


@pytest.mark.parametrize("val_data,error,message", [
    (torch.rand(3, 783), ValueError, r"^val_data has shape \(3, 783\)"),
    (torch.rand(3, 3, 28, 28), ValueError, r"^val_data has shape \(3, 3, 28, 28\)"),
    (torch.full((3, 784), math.nan), ValueError, r"^val_data holds 2352 NaN or Inf"),
    (torch.full((3, 784), 2.0), ValueError, r"^val_data has values in \[2, 2\], outside \[0, 1\]"),
    (torch.zeros(0, 784), ValueError, r"^val_data is empty"),
    (torch.full((3, 784), 255, dtype=torch.uint8), ValueError, r"^val_data is integer"),
    ([0.5] * 784, TypeError, r"^val_data must be a torch\.Tensor, numpy array, Dataset or DataLoader, got list"),
])
def test_bad_val_data_is_reported_as_val_data(params, no_work, val_data, error, message):
    with pytest.raises(error, match=message):
        run_fit(params, images(), val_data=val_data)


@pytest.mark.parametrize("z,error,message", [
    (torch.zeros(2, 4), ValueError, r"z must have shape \(N, 3\), got \(2, 4\)"),
    (torch.zeros(2, 2), ValueError, r"z must have shape \(N, 3\), got \(2, 2\)"),
    (torch.zeros(3), ValueError, r"z must have shape \(N, 3\), got \(3,\)"),
    (torch.zeros(1, 2, 3), ValueError, r"z must have shape \(N, 3\), got \(1, 2, 3\)"),
    (np.zeros((2, 3), np.float32), TypeError, r"z must be a torch\.Tensor, got ndarray"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, r"z must be floating-point, got torch\.int64"),
    (torch.tensor([[0.0, math.nan, 0.0]]), ValueError, r"z holds NaN or Inf values"),
    (torch.tensor([[0.0, 0.0, math.inf]]), ValueError, r"z holds NaN or Inf values"),
])
def test_bad_latents_are_rejected_by_decode(params, no_work, z, error, message):
    with pytest.raises(error, match=message):
        funcvae.decode(params, z)


def test_decode_returns_one_output_per_latent(params):
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = funcvae.decode(params, z)
    assert out.shape == (5, 784) and out.dtype == torch.float32
    assert torch.allclose(out[3], funcvae.decode(params, z[3:4])[0], atol=1e-6)


def test_decode_casts_float64_latents_to_the_params_dtype(params):
    z = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = funcvae.decode(params, z)
    assert out.dtype == torch.float32
    assert torch.equal(out, funcvae.decode(params, z.float()))


@pytest.mark.parametrize("beta", [math.nan, -1.0])
def test_elbo_rejects_bad_beta(params, no_work, beta):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        run_elbo(params, images(), beta=beta)


@pytest.mark.parametrize("where", ["data", "val_data"])
def test_dynamic_binarisation_rejects_data_outside_unit_interval(where):
    params = funcvae.init(seed=0, likelihood="gaussian", **SMALL)
    data, val_data = (images() * 2.0, None) if where == "data" else (images(), images(3) * 2.0)
    with pytest.raises(ValueError, match=rf"{where}.*\[0, 1\]"):
        run_fit(params, data, binarize="dynamic", val_data=val_data)


def test_every_container_gives_the_same_elbo_as_the_tensor(params):
    x = images(9, seed=4)
    labels = torch.arange(9) % 3
    want = run_elbo(params, x, k=2)
    containers = {
        "numpy": x.numpy(),
        "numpy-flat": x.reshape(9, 784).numpy(),
        "numpy-float64": x.numpy().astype(np.float64),
        "flat": x.reshape(9, 784),
        "no-channel": x.reshape(9, 28, 28),
        "TensorDataset(image, label)": TensorDataset(x, labels),
        "TensorDataset(image)": TensorDataset(x),
        "Dataset of arrays": ListDataset([(x[i].numpy(), int(labels[i])) for i in range(9)]),
        "DataLoader(image, label)": DataLoader(TensorDataset(x, labels), batch_size=4),
        "DataLoader(tensor)": DataLoader(x, batch_size=2),
    }
    for name, data in containers.items():
        got = run_elbo(params, data, k=2)
        assert all(torch.equal(got[k], want[k]) for k in want), name


def test_same_seed_same_elbo_and_another_seed_differs(params):
    x = images()
    a, b, c = (funcvae.elbo(params, x, seed=s) for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["kl"], c["kl"])  # closed form: no noise
    assert not torch.equal(a["recon"], c["recon"])


def test_a_dataloader_trains_exactly_like_the_tensor(params):
    x = images(8, seed=5)
    runs = [run_fit(params, data, batch_size=4, seed=2, val_data=x[:3])
            for data in (x, DataLoader(TensorDataset(x, torch.zeros(8)), batch_size=3))]
    (a, ha), (b, hb) = runs
    pa, pb = funcvae.leaves_by_path(a), funcvae.leaves_by_path(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]


# Images as torchvision's datasets give them without a transform: (PIL image, label) items.


class PilDataset(Dataset):
    """(PIL image, label) items made from (N, H, W) or (N, H, W, C) arrays, as torchvision's datasets yield them."""

    def __init__(self, arrays, mode=None):
        self.arrays, self.mode = arrays, mode

    def __len__(self):
        return len(self.arrays)

    def __getitem__(self, i):
        from PIL import Image

        image = Image.fromarray(self.arrays[i])
        return (image if self.mode is None else image.convert(self.mode)), i % 3


def as_channels_first(arrays):
    """(N, H, W) or (N, H, W, C) arrays as the (N, C, H, W) tensor they stand for."""
    x = torch.from_numpy(np.ascontiguousarray(arrays))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def fashion_subset(n=100):
    dataset = funcvae.data._dataset("fashion-mnist", True, None)  # torchvision's FashionMNIST, no transform
    return torch.utils.data.Subset(dataset, range(n)), dataset.data[:n]


def test_torchvision_fashion_mnist_without_a_transform_equals_its_pixels(params):
    subset, pixels = fashion_subset()
    assert type(subset[0][0]).__module__.startswith("PIL")  # the items really are PIL images
    want = run_elbo(params, pixels, scale=255)
    for data in (subset, ListDataset([subset[i][0] for i in range(len(subset))])):
        got = run_elbo(params, data, scale=255)
        assert all(torch.equal(got[k], want[k]) for k in want)
    trained, history = run_fit(params, subset, scale=255, val_data=subset, batch_size=50)
    assert math.isfinite(history[0]["val_loss"])


@pytest.mark.parametrize("where", ["data", "val_data"])
def test_pil_images_without_a_scale_are_refused_naming_pil(params, no_work, where):
    subset, _ = fashion_subset(10)
    data, val_data = (subset, None) if where == "data" else (images(), subset)
    with pytest.raises(ValueError, match=rf"^{where} is integer \(torch\.uint8, from PIL images\) with values in "
                                         r"\[0, 255\], outside \[0, 1\]; state the scale, e\.g\. scale=255"):
        run_fit(params, data, val_data=val_data)


# (PIL mode, pixel array of 4 images 6x5 (or 6x5xC), scale): channels become (C, 6, 5), in the array's order
PIL_MODES = {
    "L": (np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5), 255),
    "RGB": (np.arange(4 * 6 * 5 * 3, dtype=np.uint8).reshape(4, 6, 5, 3), 255),
    "RGBA": (np.arange(4 * 6 * 5 * 4, dtype=np.uint8).reshape(4, 6, 5, 4), 255),
    "I;16": (np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5) * 500, 65535),
    "F": (np.linspace(0, 1, 4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5), None),
    "1": (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 3 == 0, None),
}


@pytest.mark.parametrize("mode", PIL_MODES)
def test_pil_images_of_every_pixel_mode_equal_their_array(mode):
    arrays, scale = PIL_MODES[mode]
    want = as_channels_first(arrays)
    params = funcvae.init(seed=0, input_shape=(want.shape[1], 6, 5), **SMALL)
    data = PilDataset(arrays)
    assert data[0][0].mode == mode
    got_terms, want_terms = run_elbo(params, data, scale=scale), run_elbo(params, want, scale=scale)
    assert all(torch.equal(got_terms[k], want_terms[k]) for k in want_terms)


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr", "HSV"])
def test_pil_images_whose_values_are_not_pixels_are_refused(no_work, mode):
    arrays = np.arange(4 * 6 * 5 * 3, dtype=np.uint8).reshape(4, 6, 5, 3)
    channels = 4 if mode == "CMYK" else 1 if mode == "P" else 3
    params = funcvae.init(seed=0, input_shape=(channels, 6, 5), **SMALL)
    with pytest.raises(TypeError, match=rf"^data's item 0 is a PIL image in mode '{mode}', .*convert it first"):
        run_fit(params, PilDataset(arrays, mode), scale=255)


def test_a_list_of_pil_images_is_refused_with_a_hint(params, no_work):
    subset, _ = fashion_subset(4)
    with pytest.raises(TypeError, match=r"^data must be .* got list \(stack the examples into a tensor or array, or "
                                        r"wrap them in a Dataset\)"):
        run_elbo(params, [subset[i][0] for i in range(4)], scale=255)


# Datasets of other shapes, and tensors without values.


class Iterable(torch.utils.data.IterableDataset):
    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


@pytest.mark.parametrize("labelled", [False, True], ids=["images", "image-label"])
def test_an_iterable_dataset_is_read_once_like_the_tensor(params, labelled):
    x = images(9, seed=4)
    items = [(x[i], i % 3) if labelled else x[i] for i in range(9)]
    want = run_elbo(params, x, k=2)
    got = run_elbo(params, Iterable(items), k=2)
    assert all(torch.equal(got[k], want[k]) for k in want)
    (a, ha), (b, hb) = (run_fit(params, d, val_data=v, seed=2, batch_size=3)
                        for d, v in ((x, x[:3]), (Iterable(items), Iterable(items[:3]))))
    pa, pb = funcvae.leaves_by_path(a), funcvae.leaves_by_path(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa) and ha[0]["val_loss"] == hb[0]["val_loss"]


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
def test_an_empty_iterable_dataset_is_rejected(params, no_work, entry, name):
    with pytest.raises(ValueError, match=rf"^{name} is an empty IterableDataset"):
        entry(params, Iterable([]))


@pytest.mark.parametrize("where", ["data", "val_data"])
@pytest.mark.parametrize("container", ["Dataset", "IterableDataset", "DataLoader"])
def test_dict_items_are_refused_listing_their_keys(params, no_work, where, container):
    items = [{"image": x, "label": 0} for x in images()]
    data = {"Dataset": ListDataset(items), "IterableDataset": Iterable(items),
            "DataLoader": DataLoader(ListDataset(items), batch_size=2)}[container]
    what = "batch" if container == "DataLoader" else "item"
    with pytest.raises(TypeError, match=rf"^{where}'s {what} 0 is a dict \(keys \['image', 'label'\]\); pass the "
                                        r"images themselves"):
        run_fit(params, data, val_data=None) if where == "data" else run_fit(params, images(), val_data=data)


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("item,what", [("a", "str"), (None, "NoneType"), ((), "empty tuple"), (object(), "object")])
def test_items_that_are_not_examples_are_refused(params, no_work, entry, name, item, what):
    with pytest.raises(TypeError, match=rf"^{name}'s item 0 is an? {what}"):
        entry(params, ListDataset([item] * N))


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("container", ["Dataset", "DataLoader"])
def test_items_of_different_shapes_name_the_first_odd_one(params, no_work, entry, name, container):
    items = [torch.rand(784)] * 4 + [torch.rand(783), torch.rand(784)]
    if container == "Dataset":
        message = rf"^{name}'s item 4 has shape \(783,\) and item 0 \(784,\); every example must have the same shape"
        data = ListDataset(items)
    else:
        message = rf"^{name}'s batch 2 has shape \(2, 783\) and batch 0 \(2, 784\)"
        data = DataLoader(ListDataset([torch.rand(2, 784)] * 2 + [torch.rand(2, 783)]), batch_size=None)
    with pytest.raises(ValueError, match=message):
        entry(params, data)


META = {
    "tensor": lambda: torch.empty(N, 784, device="meta"),
    "uint8-tensor": lambda: torch.empty(N, 784, device="meta", dtype=torch.uint8),
    "Dataset": lambda: ListDataset([(torch.empty(784, device="meta"), 0)] * N),
    "DataLoader": lambda: DataLoader(TensorDataset(torch.empty(N, 784, device="meta")), batch_size=2),
}


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("kind", META)
def test_meta_data_are_refused_as_having_no_values(params, no_work, entry, name, kind):
    with pytest.raises(ValueError, match=rf"^{name}(\W.*)? is on the meta device \(no values\)"):
        entry(params, META[kind]())


def test_meta_val_data_are_refused_by_name(params, no_work):
    with pytest.raises(ValueError, match=r"^val_data is on the meta device \(no values\)"):
        run_fit(params, images(), val_data=torch.empty(3, 784, device="meta"))


LAYOUTS = {
    "sparse-coo": lambda x: x.to_sparse(),
    "sparse-coo-4d": lambda x: x.reshape(N, 1, 28, 28).to_sparse(),
    "sparse-csr": lambda x: x.to_sparse_csr(),
    "sparse-csc": lambda x: x.to_sparse_csc(),
    "quantized": lambda x: torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8),
}


@pytest.mark.filterwarnings("ignore:.*(beta state|deprecated):UserWarning")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_and_quantized_data_equal_their_dense_values(params, layout):
    x = (images().reshape(N, 784) * 255).round() / 255
    x[x < 0.5] = 0.0  # mostly zeros, as sparse data are
    data = LAYOUTS[layout](x)
    dense = data.dequantize() if data.is_quantized else data.to_dense()
    got, want = run_elbo(params, data), run_elbo(params, dense.reshape(N, 784))
    assert all(torch.equal(got[k], want[k]) for k in want)
    trained, history = run_fit(params, data, val_data=data)
    assert math.isfinite(history[0]["val_loss"])


@pytest.mark.filterwarnings("ignore:.*prototype stage:UserWarning")
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_a_nested_tensor_is_refused(params, no_work, layout):
    with pytest.raises(TypeError, match=r"^data is a nested tensor; examples must share one shape"):
        run_elbo(params, torch.nested.nested_tensor([torch.rand(784), torch.rand(700)], layout=layout))


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("dtype", ["<U3", "datetime64[s]", "S2", "V8"])
def test_numpy_arrays_that_hold_no_numbers_are_refused(params, no_work, entry, name, dtype):
    with pytest.raises(TypeError, match=rf"^{name} is a numpy array of dtype .*; expected numbers"):
        entry(params, np.zeros((N, 784), dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_wide_unsigned_data_follow_the_integer_rule(params, dtype):
    binary = images() > 0.5
    got, want = run_elbo(params, binary.to(dtype)), run_elbo(params, binary.to(torch.float32))
    assert all(torch.equal(got[k], want[k]) for k in want)
    big = binary.to(dtype) * 1000
    with pytest.raises(ValueError, match=rf"^data is integer \({re.escape(str(dtype))}\) with values in \[0, 1000\]"):
        run_elbo(params, big)
    got = run_elbo(params, big, scale=1000)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_read_only_arrays_are_read_without_a_warning(params, recwarn):
    x = images().numpy()
    x.flags.writeable = False
    got, want = run_elbo(params, x), run_elbo(params, images())
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


# Params that would be accepted and then fail: half precision, mixed dtypes, no values.


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("path", ["encoder/mean/kernel", "decoder/out/bias"])
def test_one_leaf_of_another_dtype_is_named_with_both_dtypes(params, no_work, entry, dtype, path):
    bad = with_leaf(params, path, funcvae.leaves_by_path(params)[path].to(dtype))
    with pytest.raises(TypeError, match=rf"^param {path} is {re.escape(str(dtype))} and the other params are "
                                        r"torch\.float32; params must all be float32 or all float64 \(mixed "
                                        r"precision is matmul_dtype=torch\.bfloat16 with float32 params\)"):
        entry(bad, images())


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_params_are_refused_pointing_to_mixed_precision(no_work, entry, dtype):
    params = funcvae.init(seed=0, dtype=dtype, **SMALL)
    with pytest.raises(TypeError, match=rf"^params are {re.escape(str(dtype))}; .*matmul_dtype=torch\.bfloat16 "
                                        r"with float32 params"):
        entry(params, images())


def test_float64_params_still_train_and_score():
    params = funcvae.init(seed=0, dtype=torch.float64, **SMALL)
    assert run_elbo(params, images())["loss"].dtype == torch.float64
    trained, history = run_fit(params, images())
    assert math.isfinite(history[0]["loss"])
    assert {t.dtype for t in funcvae.leaves_by_path(trained).values()} == {torch.float64}


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
@pytest.mark.parametrize("path", ["encoder/mean/kernel", "decoder/out/bias"])
def test_a_meta_leaf_is_refused_by_name(params, no_work, entry, path):
    leaf = funcvae.leaves_by_path(params)[path]
    with pytest.raises(ValueError, match=rf"^param {path} is on the meta device \(no values\)"):
        entry(with_leaf(params, path, torch.empty_like(leaf, device="meta")), images())


def test_meta_params_are_refused_by_check_params_and_stack_size(params):
    meta = funcvae.Params(params.model, optree.tree_map(lambda t: t.to("meta"), params.tree))
    for check in (funcvae.contract.check_params, funcvae.contract.stack_size):
        with pytest.raises(ValueError, match=r"^param \S+ is on the meta device \(no values\)"):
            check(meta)


@pytest.mark.parametrize("entry", PARAM_ENTRIES, ids=PARAM_IDS)
def test_a_sparse_leaf_is_refused_by_name(params, no_work, entry):
    path = "encoder/mean/kernel"
    with pytest.raises(TypeError, match=rf"^param {path} is a torch\.sparse_coo tensor; params must be dense"):
        entry(with_leaf(params, path, funcvae.leaves_by_path(params)[path].to_sparse()), images())


# Values just outside the support are shown exactly, with where they are.

JUST_OUTSIDE = {
    "above-1": float(np.nextafter(np.float32(1), np.float32(2))),  # 1.0000001192092896
    "below-0": float(np.nextafter(np.float32(0), np.float32(-1))),  # the negative float32 nearest 0
    "far-above": 255.0,
}


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
@pytest.mark.parametrize("value", JUST_OUTSIDE.values(), ids=JUST_OUTSIDE.keys())
def test_a_value_just_outside_the_unit_interval_is_shown_exactly_where_it_is(params, no_work, entry, name, value):
    x = images()
    x[2, 0, 5, 7] = value
    with pytest.raises(ValueError) as caught:
        entry(params, x)
    message = str(caught.value)
    assert message.startswith(f"{name} has values in [")
    lo, hi = (float(v) for v in re.match(r".*? values in \[(\S+), (\S+)\]", message).groups())
    assert lo < 0 or hi > 1  # the range it prints is itself outside [0, 1]
    assert f"the first value outside is {value!r}, at index (2, 147)" in message


def test_check_support_shows_the_first_value_outside_exactly():
    x = torch.tensor([0.5, 1.0, float(np.nextafter(np.float32(1), np.float32(2))), -0.25])
    with pytest.raises(ValueError, match=r"values in \[-0\.25, 1\.0000001192092896\], outside \[0, 1\].*"
                                         r"the first value outside is 1\.0000001192092896, at index \(2,\)"):
        funcvae.distributions.check_support("bernoulli", x)


@pytest.mark.parametrize("entry,name", DATA_ENTRIES)
def test_integer_data_outside_unit_interval_name_the_first_value_and_where(params, no_work, entry, name):
    x = torch.zeros(N, 1, 28, 28, dtype=torch.int64)
    x[3, 0, 1, 2], x[4, 0, 0, 0] = 7, -2
    with pytest.raises(ValueError, match=rf"^{name} is integer .* values in \[-2, 7\], outside \[0, 1\]; .*"
                                         r"the first value outside is 7, at index \(3, 30\)"):
        entry(params, x)
