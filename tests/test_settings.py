"""fit's settings as users compute them: numpy scalars (``np.logspace(...)[i]``), 0-d arrays and tensors, and
1-D arrays for a stack's per-model values become the plain Python values they hold at the boundary, so a run
saves its settings as JSON, compares them on resume and trains exactly as with the plain numbers."""

import dataclasses

import numpy as np
import pytest
import torch

import funcvae
from funcvae.checkpoint import load

SMALL = dict(hidden=(16,), latent=3)
N = 40


def data():
    return torch.rand(N, 784, generator=torch.Generator().manual_seed(0))


def pixels():
    return torch.randint(0, 256, (N, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def same_types(a, b) -> bool:
    """``a == b`` with the same Python type at every level (a numpy or tensor scalar is not a plain value)."""
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same_types(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_types(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def plain(value):
    """What a numpy scalar, 0-d array or tensor, or a sequence of them, stands for."""
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        return value.tolist()
    return value.item() if isinstance(value, (np.generic, np.ndarray, torch.Tensor)) else value


# (field, the value given, the plain value FitConfig must hold)
CONFIG_FIELDS = [
    ("epochs", np.int64(2), 2),
    ("epochs", np.array(2), 2),
    ("epochs", torch.tensor(2), 2),
    ("batch_size", np.int32(4), 4),
    ("batch_size", np.uint16(4), 4),
    ("seed", np.uint8(3), 3),
    ("seed", torch.tensor(3), 3),
    ("seed", [np.int64(1), np.int64(2)], (1, 2)),
    ("seed", np.array([1, 2]), (1, 2)),
    ("seed", torch.tensor([1, 2]), (1, 2)),
    ("scale", np.float32(255), 255.0),
    ("scale", np.int64(255), 255),
    ("scale", torch.tensor(255.0), 255.0),
    ("checkpoint_every", np.int64(2), 2),
    ("overwrite", np.True_, True),
    ("progress", np.False_, False),
    ("progress", torch.tensor(True), True),
    ("compile", np.False_, False),
    ("binarize", np.str_("dynamic"), "dynamic"),
    ("on_nonfinite", np.str_("skip"), "skip"),
]


@pytest.mark.parametrize("field,value,want", CONFIG_FIELDS,
                         ids=[f"{f}-{type(v).__name__}" for f, v, _ in CONFIG_FIELDS])
def test_fit_config_holds_plain_python_values(field, value, want):
    config = funcvae.FitConfig(**{"epochs": 1, field: value})
    assert same_types(getattr(config, field), want)


def test_fit_config_resume_takes_a_numpy_bool(tmp_path):
    config = funcvae.FitConfig(epochs=1, checkpoint_dir=str(tmp_path), resume=np.True_)
    assert config.resume is True


def test_every_field_of_a_default_config_is_plain():
    config = funcvae.FitConfig(epochs=np.int64(1))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        assert value is None or type(value) in (int, float, bool, str, tuple), (f.name, type(value))


@pytest.mark.parametrize("setting,value,message", [
    ("epochs", np.float64(2.0), "epochs must be an int >= 1, got 2.0"),
    ("epochs", np.True_, "epochs must be an int >= 1, got True"),
    ("epochs", torch.tensor(2.0), "epochs must be an int >= 1, got 2.0"),
    ("batch_size", np.array([4, 4]), r"batch_size must be an int >= 1, got array\(\[4, 4\]\)"),
    ("seed", np.int64(-1), "seed must be an int >= 0, got -1"),
    ("seed", np.array([[1, 2]]), r"seed must be an int >= 0, got array\(\[\[1, 2\]\]\)"),
    ("checkpoint_every", np.int64(0), "checkpoint_every must be an int >= 1, got 0"),
    ("scale", np.float32(0), r"scale must be a positive finite number, got np\.float32\(0\.0\)"),
    ("scale", np.complex64(255), "scale must be a positive finite number"),
    ("overwrite", "yes", "overwrite must be True or False, got 'yes'"),
    ("overwrite", 1, "overwrite must be True or False, got 1"),
    ("progress", np.int64(0), "progress must be True or False, got 0"),
    ("compile", 3, "compile must be None, True, False, a backend name or a backend function, got 3"),
    ("binarize", np.array("dynamic"), "binarize must be one of"),
])
def test_bad_numpy_and_tensor_settings_are_rejected_by_name(setting, value, message):
    with pytest.raises(ValueError, match=message):
        funcvae.FitConfig(**{"epochs": 1, setting: value})


def fit_and_load(folder, x, params, **settings):
    trained, history = funcvae.fit(params, x, epochs=settings.pop("epochs", 1),
                                   batch_size=settings.pop("batch_size", 10), checkpoint_dir=folder,
                                   compile=False, progress=False, **settings)
    return trained, history, load(folder / "checkpoint.safetensors")


# (settings of one model, or of a stack of two when "stack"), as numpy scalars, 0-d arrays, tensors
FIT_SETTINGS = {
    "issue-example": dict(batch_size=np.int64(10), seed=np.int64(3), lr=np.float32(1e-3)),
    "epochs": dict(epochs=np.int64(2)),
    "seed-uint8": dict(seed=np.uint8(5)),
    "lr-0d-tensor": dict(lr=torch.tensor(2e-3)),
    "lr-0d-array": dict(lr=np.array(2e-3)),
    "beta": dict(beta=np.float32(0.5)),
    "kl_warmup": dict(kl_warmup=np.float32(1.5)),
    "free_bits": dict(free_bits=np.float64(0.1)),
    "dp": dict(clip_norm=np.float32(1.0), noise_multiplier=np.float32(0.5)),
    "checkpoint_every": dict(checkpoint_every=np.int64(3)),
    "scale": dict(scale=np.float32(255)),
    "stack-seeds": dict(stack=True, seed=[np.int64(1), np.int64(2)]),
    "stack-seeds-array": dict(stack=True, seed=np.array([1, 2])),
    "stack-lrs": dict(stack=True, lr=np.logspace(-3, -2, 2)),
    "stack-lrs-tensor": dict(stack=True, lr=torch.tensor([1e-3, 2e-3])),
    "stack-betas": dict(stack=True, beta=[np.float32(1.0), np.float16(0.5)]),
}


@pytest.mark.parametrize("settings", FIT_SETTINGS.values(), ids=FIT_SETTINGS.keys())
def test_numpy_settings_checkpoint_and_train_exactly_as_plain_ones(tmp_path, settings):
    settings = dict(settings)
    stacked = settings.pop("stack", False)
    models = [funcvae.init(seed=s, **SMALL) for s in (0, 1)]
    params = funcvae.stack(models) if stacked else models[0]
    x = pixels() if "scale" in settings else data()
    got = fit_and_load(tmp_path / "numpy", x, params, **settings)
    want = fit_and_load(tmp_path / "plain", x, params, **{k: plain(v) for k, v in settings.items()})
    (trained, history, state), (trained_p, history_p, state_p) = got, want
    a, b = funcvae.leaves_by_path(trained), funcvae.leaves_by_path(trained_p)
    assert all(torch.equal(a[k], b[k]) for k in b)
    strip = (lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h])
    assert (strip(history) == strip(history_p)) if not stacked else all(
        strip(h) == strip(hp) for h, hp in zip(history, history_p))
    assert same_types(state.config, state_p.config)


def test_resume_with_numpy_settings_continues_a_plain_run(tmp_path):
    params, x = funcvae.init(seed=0, **SMALL), data()
    fit_and_load(tmp_path, x, params, seed=3, lr=float(np.float32(1e-3)))
    resumed, history, _ = fit_and_load(tmp_path, x, params, epochs=np.int64(2), seed=np.int64(3),
                                       lr=np.float32(1e-3), resume=np.True_)
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize("build", [
    lambda n: funcvae.optim.adam(n(1e-3)), lambda n: funcvae.optim.adamw(n(1e-3), weight_decay=n(0.5)),
    lambda n: funcvae.optim.sgd(n(1e-2), momentum=n(0.5)), lambda n: funcvae.optim.clip_by_global_norm(n(2.0)),
    lambda n: funcvae.optim.differentially_private_aggregate(n(1.0), n(0.5)),
    lambda n: funcvae.objectives.elbo(n(0.5)), lambda n: funcvae.objectives.iwae(int(n(5))),
    lambda n: funcvae.objectives.free_bits(funcvae.objectives.elbo(n(1.0)), n(0.25)),
], ids=["adam", "adamw", "sgd", "clip", "dp", "elbo", "iwae", "free_bits"])
def test_objects_built_from_numpy_numbers_are_those_of_plain_ones(build):
    # Their names are what a resume compares: a numpy number must not make the same run look like another.
    assert build(np.float64).name == build(float).name
