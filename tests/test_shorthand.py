"""The one builder of objectives and optimisers from shorthand: its table of defaults, what each setting
builds (as the constructors of ``objectives`` and ``optim`` would), and that ``fit`` goes through it."""

import warnings

import pytest
import torch

import funcvae
from funcvae import objectives, optim, schedules, shorthand


def names(built: shorthand.Built) -> tuple[list, list]:
    return [o.name for o in built.objectives], [o.name for o in built.optimizers]


def test_the_defaults():
    assert shorthand.DEFAULTS == {"objective": "elbo", "k": 5, "beta": 1.0, "kl_warmup": 0.0, "free_bits": None,
                                  "mmd_weight": 1000.0, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9,
                                  "weight_decay": 1e-2, "clip_norm": None, "noise_multiplier": 0.0}
    assert names(shorthand.build({})) == ([objectives.elbo(1.0).name], [optim.adam(1e-3).name])


@pytest.mark.parametrize("settings,objective,optimizer", [
    (dict(beta=0.5, kl_warmup=2), objectives.elbo(0.5, warmup=schedules.warmup(2 * 7)), optim.adam(1e-3)),
    (dict(objective="iwae", k=3, beta=None, kl_warmup=None), objectives.iwae(3), optim.adam(1e-3)),
    (dict(free_bits=0.25, lr=3e-3), objectives.free_bits(objectives.elbo(1.0), 0.25), optim.adam(3e-3)),
    (dict(optimizer="sgd", lr=0.01), objectives.elbo(1.0), optim.sgd(0.01, momentum=0.9)),
    (dict(optimizer="adamw", weight_decay=0.05), objectives.elbo(1.0), optim.adamw(1e-3, weight_decay=0.05)),
    (dict(clip_norm=1.0, noise_multiplier=0.5), objectives.elbo(1.0),
     optim.chain(optim.differentially_private_aggregate(1.0, 0.5), optim.adam(1e-3))),
])
def test_each_setting_builds_what_the_constructors_build(settings, objective, optimizer):
    assert names(shorthand.build(settings, steps_per_epoch=7)) == ([objective.name], [optimizer.name])


def test_a_stack_takes_one_beta_and_lr_per_model():
    built = shorthand.build(dict(beta=[0.5, 2.0], lr=[1e-3, 1e-2]), 1, n_models=2)
    assert names(built) == ([objectives.elbo(0.5).name, objectives.elbo(2.0).name],
                            [optim.adam(1e-3).name, optim.adam(1e-2).name])


@pytest.mark.parametrize("settings,kwargs,message", [
    (dict(beta=2.0), dict(objective=objectives.elbo()), r"either objective= or the shorthand \['beta'\]"),
    (dict(lr=1e-2), dict(optimizer=optim.adam(1e-3)), r"either optimizer= or the shorthand \['lr'\]"),
    (dict(noise_multiplier=1.0), {}, "noise_multiplier needs clip_norm"),
    (dict(clip_norm=1.0), dict(n_models=2), "clip_norm .* not a stack"),
    (dict(beta=[1.0, 2.0]), {}, "beta has 2 values"),
    (dict(objective="vae"), {}, "objective must be one of"),
    (dict(optimizer="rmsprop"), {}, "optimizer must be one of"),
])
def test_bad_shorthand_is_refused(settings, kwargs, message):
    with pytest.raises(ValueError, match=message):
        shorthand.build(settings, **kwargs)


def test_fit_builds_its_default_objective_and_optimizer_with_the_builder(tmp_path):
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(0))
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    settings = dict(epochs=1, batch_size=16, compile=False, progress=False)
    _, got = funcvae.fit(params, x, lr=3e-3, beta=0.5, kl_warmup=1, checkpoint_dir=tmp_path / "a", **settings)
    (objective,), (optimizer,) = shorthand.build(dict(lr=3e-3, beta=0.5, kl_warmup=1), steps_per_epoch=3)
    _, want = funcvae.fit(params, x, objective=objective, optimizer=optimizer, checkpoint_dir=tmp_path / "b",
                          **settings)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in (got[0], want[0])]
    assert strip[0] == strip[1]
    a, b = (funcvae.load(tmp_path / d / funcvae.CHECKPOINT_FILE).config for d in "ab")
    assert a == b


def test_callback_is_the_old_spelling_of_callbacks():
    x = torch.rand(40, 784, generator=torch.Generator().manual_seed(0))
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    new, old = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        funcvae.fit(params, x, epochs=2, batch_size=16, compile=False, progress=False, callbacks=[new.append],
                    callback=old.append)
    assert [r["epoch"] for r in new] == [r["epoch"] for r in old] == [1, 2]
    assert [w.category for w in caught if "callback" in str(w.message)] == [DeprecationWarning]
