"""8-bit training data held as uint8 and divided inside the step: every level has the float path's value
(eager and compiled), fit gives the same params, history and data fingerprint as on the same images given as
floats, runs resume across the two forms, and bad data are refused with the float path's messages."""

import hashlib
import importlib
import json
import re

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcvae
import funcvae.cli
import funcvae.sweep
from funcvae import inputs, objectives, optim, shorthand
from funcvae._runtime import compiling
from funcvae.batches import epoch_batches
from funcvae.cli import options
from funcvae.config import steps_per_epoch
from funcvae.pixels import level_values, pixel_values
from funcvae.step import Batch, init_state, make_train_step, stacked

from test_cli_eval import fake_load

LOOP = importlib.import_module("funcvae._train.loop")
FOLDER = importlib.import_module("funcvae._train.folder")
SMALL = dict(hidden=(16,), latent=3)
SCALES = (255, 1, 2, 3, 7.3, 100, 127.5, 256, 0.1, 1e-3)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pixels(n=200, seed=0) -> torch.Tensor:
    """(n, 1, 28, 28) uint8 levels, both ends of the range among them."""
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    x.view(n, -1)[0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    return x


def values(x: torch.Tensor, scale=255, dtype=torch.float32) -> torch.Tensor:
    """What fit makes of integer data given as they are: the float path, ``(x.to(float64) / scale).to(dtype)``."""
    return (x.to(torch.float64) / scale).to(dtype)


def same(a, b) -> bool:
    leaves_a, leaves_b = optree.tree_leaves(a, namespace="funcvae"), optree.tree_leaves(b, namespace="funcvae")
    return len(leaves_a) == len(leaves_b) and all(torch.equal(s, t) for s, t in zip(leaves_a, leaves_b))


def without_seconds(history: list) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# -- Every level's value ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_every_level_has_the_float_paths_value(dtype):
    levels = torch.arange(256, dtype=torch.uint8)
    for scale in SCALES:
        got = pixel_values(levels, level_values(scale, dtype))
        assert got.dtype == dtype and torch.equal(got, values(levels, scale, dtype)), scale


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_every_level_has_the_float_paths_value_under_inductor(device):
    # On a GPU inductor turns a division by a constant into a multiplication by its reciprocal: the levels'
    # table is divided in Python instead, so its values are exact there too.
    if device == "cpu" and not compiling.has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on CPU")

    def all_scales(x):
        return torch.stack([pixel_values(x, level_values(s, torch.float32, x.device))
                            for s in SCALES])

    levels = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    want = torch.stack([values(levels, s) for s in SCALES])
    got = torch.compile(all_scales, backend="inductor", fullgraph=True)(levels.to(device))
    assert torch.equal(got.cpu(), want)


# -- The step -----------------------------------------------------------------------------------------------

def _step_case(kind: str, scale):
    """(step, state, batch of levels, batch of their values) of one model, or a stack of two (``kind``)."""
    params = funcvae.init(seed=0, **SMALL)
    objective = objectives.elbo(0.5)
    optimizer = optim.adam(1e-3) if kind != "per_example" else optim.chain(
        optim.differentially_private_aggregate(1.0, 0.5), optim.adam(1e-3))
    step = make_train_step(params.model, objective, optimizer, scale=scale)
    state = init_state(params, objective, optimizer)
    g = torch.Generator().manual_seed(1)
    levels = torch.randint(0, 256 if scale else 2, (8, 784), dtype=torch.uint8, generator=g)
    eps, weights = torch.randn(8, 1, 3, generator=g), torch.tensor([1.0] * 6 + [0.0] * 2)
    noise = optree.tree_map(lambda t: torch.randn(t.shape, generator=g), state.tree) if kind == "per_example" else None
    batch = Batch(levels, eps, weights, None, noise)
    if kind == "stack":
        state = optree.tree_map(lambda t: torch.stack([t, t]), state)
        batch = Batch(torch.stack([levels, levels.flip(0)]), torch.stack([eps, -eps]), torch.stack([weights] * 2))
    return step, state, batch, batch._replace(x=values(batch.x, scale or 1))


@pytest.mark.parametrize("kind,scale", [("single", 255), ("single", None), ("per_example", 255), ("stack", 255),
                                        ("halves", 100)])
def test_a_step_on_levels_equals_the_step_on_their_values(kind, scale):
    # Compiled: in test_fit_on_uint8_pixels_equals_fit_on_their_float_values (a stack, so vmap too).
    step, state, levels, floats = _step_case(kind, scale)
    if kind == "halves":  # data parallelism: the two halves, the whole batch's rows given
        levels, floats = (b._replace(total=torch.tensor(6.0)) for b in (levels, floats))
        run = lambda s, b: step.apply(s, *step.gradients(s, b), b)  # noqa: E731
    else:
        run = stacked(step) if kind == "stack" else step
    assert same(run(state, levels), run(state, floats))


def test_steps_of_other_scales_are_other_steps():
    params = funcvae.init(seed=0, **SMALL)
    a, b, c = (make_train_step(params.model, objectives.elbo(), optim.adam(1e-3), scale=s) for s in (255, 255.0, 100))
    assert a == b and hash(a) == hash(b) and a != c
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        make_train_step(params.model, objectives.elbo(), optim.adam(1e-3), scale=0)
    state = init_state(params, objectives.elbo(), optim.adam(1e-3))
    with pytest.raises(TypeError, match=r"a batch's x must be floats or uint8 pixel levels, got torch\.int64"):
        a(state, Batch(torch.zeros(2, 784, dtype=torch.int64), torch.zeros(2, 1, 3), torch.ones(2)))


# -- fit ----------------------------------------------------------------------------------------------------

def spy_batches(monkeypatch) -> list:
    """fit's training set as it holds it, then the x of each batch, recorded as model_batches gets them."""
    seen, real = [], LOOP.model_batches

    def batches(x, *args, **kwargs):
        seen.append(x)
        for batch in real(x, *args, **kwargs):
            seen.append(batch[0])
            yield batch
    monkeypatch.setattr(LOOP, "model_batches", batches)
    return seen


FITS = {
    "plain": dict(),
    "dynamic-binarisation": dict(binarize="dynamic"),
    "stack": dict(lr=[1e-3, 3e-3], beta=[0.5, 2.0]),
    "dp-sgd": dict(clip_norm=1.0, noise_multiplier=0.5),
    "warm-up": dict(kl_warmup=1),
    "iwae": dict(objective=objectives.iwae(3)),
}


@pytest.mark.parametrize("case,compile", [(case, False) for case in FITS] + [("stack", "aot_eager")])
def test_fit_on_uint8_pixels_equals_fit_on_their_float_values(monkeypatch, case, compile):
    settings_ = dict(FITS[case], epochs=2, batch_size=64, compile=compile, progress=False)
    params = funcvae.init(seed=0, **SMALL)
    params = funcvae.stack([params, params]) if case == "stack" else params
    x, x_val = pixels(), pixels(40, 1)
    seen = spy_batches(monkeypatch)
    got = funcvae.fit(params, x, val_data=x_val, scale=255, **settings_)
    held, batch = seen[0], seen[1]
    assert held.dtype == torch.uint8 and held.shape == (200, 784) and held.untyped_storage().nbytes() == 200 * 784
    assert batch.dtype == (torch.float32 if case == "dynamic-binarisation" else torch.uint8)
    floats_held = len(seen)
    want = funcvae.fit(params, values(x), val_data=values(x_val), **settings_)
    assert seen[floats_held].dtype == torch.float32
    assert same(got[0], want[0])
    histories = (got[1], want[1]) if case != "stack" else (sum(got[1], []), sum(want[1], []))
    assert without_seconds(histories[0]) == without_seconds(histories[1])


@pytest.mark.parametrize("binarize", [None, "dynamic"])
def test_data_parallel_shards_of_levels_are_the_rows_of_the_whole_batch(binarize):
    # 130 = 2 * 64 + 2: the last batch is padded, the padding rows weighted 0.
    x = pixels(130).reshape(130, -1)

    def epoch(shard):
        return list(epoch_batches(x, 64, torch.Generator().manual_seed(0), 3, binarize, shard=shard, scale=255,
                                  dtype=torch.float32))
    whole, first, second = epoch((0, 1)), epoch((0, 2)), epoch((1, 2))
    assert len(whole) == 3 and whole[-1][2].sum() == 2
    for b, batch in enumerate(whole):
        assert batch[0].dtype == (torch.uint8 if binarize is None else torch.float32)
        assert batch[1].dtype == batch[2].dtype == torch.float32
        assert all(torch.equal(torch.cat([first[b][i], second[b][i]]), batch[i]) for i in range(3))


@pytest.mark.parametrize("data,scale,held", [
    (torch.ones(20, 784, dtype=torch.bool), None, torch.uint8),           # bool: 0/1 levels, scale 1
    (torch.randint(0, 2, (20, 784), dtype=torch.int64), None, torch.uint8),
    (torch.randint(0, 256, (20, 784), dtype=torch.int16), 255, torch.uint8),
    (torch.randint(0, 1000, (20, 784), dtype=torch.int64), 1000, torch.float32),  # not 8-bit: floats, as before
    (torch.randint(-5, 200, (20, 784), dtype=torch.int16), 255, torch.float32),
])
def test_integers_are_held_as_uint8_only_when_they_are_8_bit(monkeypatch, data, scale, held):
    seen = spy_batches(monkeypatch)
    params = funcvae.init(seed=0, likelihood="gaussian", obs_std=0.5, **SMALL)
    got = funcvae.fit(params, data, scale=scale, epochs=1, batch_size=10, compile=False, progress=False)
    assert seen[0].dtype == held
    want = funcvae.fit(params, values(data, scale or 1), epochs=1, batch_size=10, compile=False, progress=False)
    assert same(got[0], want[0]) and without_seconds(got[1]) == without_seconds(want[1])


def test_rate_distortion_on_uint8_pixels_equals_it_on_their_values():
    params = funcvae.init(seed=0, **SMALL)
    common = dict(betas=[0.5, 2.0], epochs=1, batch_size=50, compile=False, progress=False)
    got = funcvae.sweep.rate_distortion(params, pixels(100), val_data=pixels(30, 1).numpy(), scale=255, **common)
    want = funcvae.sweep.rate_distortion(params, values(pixels(100)), val_data=values(pixels(30, 1)), **common)
    assert [{**r, "history": without_seconds(r["history"])} for r in got] == \
        [{**r, "history": without_seconds(r["history"])} for r in want]


# -- Fingerprint and resume ---------------------------------------------------------------------------------

def checkpointed(folder, data, epochs=1, **kw):
    funcvae.fit(funcvae.init(seed=0, **SMALL), data, epochs=epochs, batch_size=64, checkpoint_dir=folder,
                compile=False, progress=False, **kw)
    return funcvae.load(folder / funcvae.CHECKPOINT_FILE).config


def test_the_fingerprint_of_uint8_pixels_is_that_of_their_float_values(tmp_path, monkeypatch):
    monkeypatch.setattr(FOLDER, "FINGERPRINT_ROWS", 7)  # many chunks, the last one short
    x, x_val = pixels(), pixels(40, 1)
    from_levels = checkpointed(tmp_path / "levels", x, scale=255, val_data=x_val)
    from_floats = checkpointed(tmp_path / "floats", values(x), val_data=values(x_val))
    assert from_levels == from_floats
    digest = hashlib.sha256(values(x).reshape(200, -1).numpy().tobytes()).hexdigest()
    assert from_levels["data"] == {"shape": [200, 784], "dtype": "float32", "sha256": digest}
    other = x.clone()
    other.view(200, -1)[199, 783] ^= 1  # one level of the last row
    assert checkpointed(tmp_path / "other", other, scale=255)["data"]["sha256"] != digest


@pytest.mark.parametrize("first,then", [("floats", "levels"), ("levels", "floats")])
def test_a_run_resumes_on_the_other_form_of_its_data(tmp_path, first, then):
    forms = {"levels": (pixels(), dict(scale=255)), "floats": (values(pixels()), {})}
    checkpointed(tmp_path / "run", forms[first][0], binarize="dynamic", **forms[first][1])
    resumed = funcvae.fit(funcvae.init(seed=0, **SMALL), forms[then][0], epochs=2, batch_size=64, binarize="dynamic",
                          checkpoint_dir=tmp_path / "run", resume=True, compile=False, progress=False,
                          **forms[then][1])
    whole = funcvae.fit(funcvae.init(seed=0, **SMALL), forms["floats"][0], epochs=2, batch_size=64,
                        binarize="dynamic", compile=False, progress=False)
    assert same(resumed[0], whole[0]) and without_seconds(resumed[1]) == without_seconds(whole[1])


@pytest.mark.parametrize("binarize", [None, "static"])
def test_a_cli_run_made_on_float32_images_resumes_on_their_levels(tmp_path, fashion, monkeypatch, binarize):
    # Before 8-bit data were held as uint8, train fitted data.load's float32 images: that run's checkpoint,
    # made here by the same fit, is the checkpoint of a run folder that train --resume continues.
    subset = {"train": fashion[0][:256].clone(), "test": fashion[1][:64].clone()}
    load = fake_load(subset, [])
    monkeypatch.setattr(funcvae.data, "load", load)
    args = ["--out", tmp_path / "runs", "--quiet", "--no-compile", "--hidden", "8", "--latent", "2",
            "--batch-size", "64"] + (["--binarize", "static"] if binarize else [])
    assert funcvae.cli.main(["train", "--epochs", "1", *map(str, args)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    fit = config["fit"]
    floats = {s: load(config["dataset"], s, binarize=binarize, seed=fit["seed"]) for s in ("train", "test")}
    assert floats["train"].dtype == torch.float32
    before = checkpointed_like_cli(tmp_path / "before", config, floats)
    now = funcvae.load(run_dir / funcvae.CHECKPOINT_FILE)
    assert now.config == before.config and same(now.params, before.params)
    (tmp_path / "before" / funcvae.CHECKPOINT_FILE).replace(run_dir / funcvae.CHECKPOINT_FILE)
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 0
    assert [json.loads(line)["epoch"] for line in (run_dir / "history.jsonl").read_text().splitlines()] == [1, 2]


def checkpointed_like_cli(folder, config: dict, data: dict):
    """The checkpoint that train, before 8-bit data were held as uint8, wrote for ``config`` on float ``data``."""
    fit = config["fit"]
    params = funcvae.init(seed=fit["seed"], **config["model"])
    (objective,), (optimizer,) = shorthand.build(fit, steps_per_epoch(config["n_train"], fit["batch_size"]))
    funcvae.fit(params, data["train"], val_data=data["test"], checkpoint_dir=folder, progress=False,
                objective=objective, optimizer=optimizer, **options.fit_fields(fit))
    return funcvae.load(folder / funcvae.CHECKPOINT_FILE)


# -- Bad data -----------------------------------------------------------------------------------------------

def outcome(call):
    """A call's result, or its error's type and message."""
    try:
        return call()
    except (TypeError, ValueError) as e:
        return type(e), str(e)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([torch.uint8, torch.bool, torch.int16, torch.int64]), top=st.integers(0, 300),
       low=st.integers(-2, 0), scale=st.sampled_from([None, 1, 2, 100, 255, 1e-40]),
       likelihood=st.sampled_from(["bernoulli", "gaussian"]), seed=st.integers(0, 1000))
def test_levels_are_checked_and_valued_as_the_float_path(dtype, top, low, scale, likelihood, seed):
    # 1e-40: level 255 / 1e-40 overflows float32, so the data hold Inf (counted, the first one named).
    top = {torch.uint8: min(top, 255), torch.bool: min(top, 1)}.get(dtype, top)
    low = 0 if dtype in (torch.uint8, torch.bool) else low
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(low, top + 1, (5, 784), generator=g).to(dtype)
    x[int(torch.randint(5, (), generator=g)), int(torch.randint(784, (), generator=g))] = top
    model = funcvae.init(seed=0, likelihood=likelihood, **SMALL).model
    like = torch.zeros(())
    floats = outcome(lambda: inputs.as_examples(x, model, scale=scale, like=like))
    held = outcome(lambda: inputs.as_levels(x, model, scale=scale, like=like))
    if isinstance(floats, tuple):
        assert held == floats
        return
    levels, held_scale = held
    assert (levels.dtype == torch.uint8) == (low >= 0 and top <= 255)
    got = levels if held_scale is None else pixel_values(levels, level_values(held_scale, like.dtype))
    assert torch.equal(got, floats)


def test_8_bit_pixels_without_a_scale_are_refused_as_before():
    with pytest.raises(ValueError, match=r"^data is integer \(torch\.uint8\) with values in \[0, 255\], outside "
                                         r"\[0, 1\]; state the scale, e\.g\. scale=255 for 8-bit pixels \(the first "
                                         r"value outside is 255, at index \(0, 1\)\)"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), pixels(), epochs=1, compile=False)


@pytest.mark.parametrize("settings_", [dict(scale=100, binarize="dynamic"), dict(scale=1), dict(scale=1e-40)])
def test_bad_8_bit_pixels_get_the_float_paths_message(settings_):
    # Dynamic binarisation takes the values as probabilities, whatever the likelihood: they must lie in [0, 1].
    model = funcvae.init(seed=0, likelihood="gaussian" if "binarize" in settings_ else "bernoulli", **SMALL)
    run = dict(epochs=1, compile=False, progress=False, **settings_)
    held = outcome(lambda: funcvae.fit(model, pixels(), **run))
    as_floats = outcome(lambda: funcvae.fit(model, pixels().to(torch.float64).numpy(), **run))
    assert held == as_floats and held[0] is ValueError
    assert re.search(r"outside \[0, 1\], the support of the Bernoulli likelihood|NaN or Inf", held[1])
