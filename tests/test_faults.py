"""Numerical faults and hostile input: a non-finite step never touches the params; bad data, settings and
files fail with a named error, never an unexplained traceback."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcvae
import funcvae._train.loop as LOOP
from funcvae.train import CHECKPOINT_FILE

SMALL = dict(hidden=(16,), latent=3)


def poisoned_batches(bad_batch: int, value: float, at: tuple = (0, 0)):
    """model_batches with the value at index ``at`` of batch ``bad_batch`` (of every epoch) replaced by
    ``value``."""
    real = LOOP.model_batches

    def batches(*args, **kwargs):
        for b, (x, eps, w, c) in enumerate(real(*args, **kwargs), start=kwargs.get("start", 0)):
            if b == bad_batch:
                x = x.clone()
                x[at] = value
            yield x, eps, w, c
    return batches


def data():
    return torch.rand(200, 784, generator=torch.Generator().manual_seed(0))


def test_a_non_finite_recon_stops_the_run_naming_batch_and_term(tmp_path, monkeypatch):
    funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=1, batch_size=50, checkpoint_dir=tmp_path,
                compile=False)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    monkeypatch.setattr(LOOP, "model_batches", poisoned_batches(2, math.nan))
    with pytest.raises(funcvae.NonFiniteError, match=r"non-finite recon at epoch 2, batch 3 of 4.*last checkpoint"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=2, batch_size=50, checkpoint_dir=tmp_path,
                    resume=True, compile=False)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


def test_raise_freezes_the_run_at_the_bad_step_and_keeps_the_checkpoint_before_it(tmp_path, monkeypatch):
    # The device is read only at the next checkpoint (or the epoch's end): the steps between the bad one and
    # that read must change nothing, so the last checkpoint is the one written just before the bad step.
    monkeypatch.setattr(LOOP, "model_batches", poisoned_batches(1, math.nan))
    with pytest.raises(funcvae.NonFiniteError, match=r"non-finite recon at epoch 1, batch 2 of 4"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=1, batch_size=50, checkpoint_dir=tmp_path,
                    checkpoint_every=3, compile=False)
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # batch 3's checkpoint was never written
    monkeypatch.undo()
    monkeypatch.setattr(LOOP, "model_batches", poisoned_batches(3, math.nan))
    with pytest.raises(funcvae.NonFiniteError, match=r"batch 4 of 4"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=1, batch_size=50, checkpoint_dir=tmp_path,
                    checkpoint_every=3, compile=False)
    assert funcvae.load(tmp_path / CHECKPOINT_FILE).step == 3


def test_a_stack_names_the_model_whose_step_went_bad(monkeypatch):
    monkeypatch.setattr(LOOP, "model_batches", poisoned_batches(2, math.inf, at=(1, 0, 0)))  # model 1's batch
    stack = funcvae.stack([funcvae.init(seed=s, **SMALL) for s in (0, 1, 2)])
    with pytest.raises(funcvae.NonFiniteError, match=r"non-finite recon of model 1 at epoch 1, batch 3 of 4"):
        funcvae.fit(stack, data(), epochs=1, batch_size=50, seed=[0, 1, 2], compile=False)


def test_skip_leaves_the_params_untouched_by_the_bad_step_and_counts_it(monkeypatch):
    params = funcvae.init(seed=0, **SMALL)
    monkeypatch.setattr(LOOP, "model_batches", poisoned_batches(1, math.inf))
    trained, history = funcvae.fit(params, data(), epochs=2, batch_size=50, on_nonfinite="skip", compile=False)
    assert [h["skipped"] for h in history] == [1, 1]
    assert all(math.isfinite(h[k]) for h in history for k in ("recon", "kl", "loss"))
    assert all(bool(torch.isfinite(t).all()) for t in funcvae.leaves_by_path(trained).values())


def test_the_guard_keeps_params_and_optimiser_state_exactly():
    from funcvae.optim import adam, apply_if_finite
    from funcvae.step import Batch, init_state, make_train_step

    params = funcvae.init(seed=0, **SMALL)
    objective, opt = funcvae.objectives.elbo(), apply_if_finite(adam(1e-3))
    state = init_state(params, objective, opt)
    x = data()[:8].clone()
    x[3, 5] = math.nan
    new, stats = make_train_step(params.model, objective, opt)(state, Batch(x, torch.randn(8, 1, 3), torch.ones(8)))
    assert float(stats[-1]) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(funcvae.Params(params.model, new.tree)).values(),
                                                 funcvae.leaves_by_path(params).values()))
    assert int(new.opt_state.inner.count) == 0 and int(new.opt_state.skipped) == 1


def test_extreme_encoder_outputs_keep_the_bound_finite():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    big = funcvae.Params(params.model, {**params.tree, "encoder": {**params.tree["encoder"], "logvar": {
        "kernel": params.tree["encoder"]["logvar"]["kernel"] * 1e4, "bias": params.tree["encoder"]["logvar"]["bias"]}}})
    terms = funcvae.elbo(big, data()[:20], seed=0)
    assert all(bool(torch.isfinite(v).all()) for v in terms.values())


ALLOWED = (ValueError, TypeError)
dtypes = st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_, np.complex64, np.float16])
shapes = st.lists(st.integers(0, 30), min_size=0, max_size=5).map(tuple) | st.sampled_from(
    [(3, 784), (2, 28, 28), (2, 1, 28, 28), (4, 3, 28, 28), (0, 784)])


@settings(max_examples=60)
@given(shape=shapes, dtype=dtypes, fill=st.sampled_from([0.5, 2.0, -1.0, math.nan, math.inf, 255]),
       scale=st.sampled_from([None, 255, 0, -1, math.nan]))
def test_fuzzed_data_is_accepted_or_refused_with_a_named_error(shape, dtype, fill, scale):
    params = funcvae.init(seed=0, hidden=(4,), latent=2)
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.full(shape, fill).astype(dtype)
    for call in (lambda: funcvae.elbo(params, x, seed=0, scale=scale),
                 lambda: funcvae.fit(params, x, epochs=1, batch_size=1, scale=scale, compile=False)):
        try:
            call()
        except ALLOWED as e:
            assert str(e)  # says what is wrong


@settings(max_examples=40)
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4))
def test_damaged_checkpoints_load_or_fail_with_a_value_error(tmp_path_factory, cut, flips):
    folder = tmp_path_factory.mktemp("ckpt")
    funcvae.fit(funcvae.init(seed=0, hidden=(4,), latent=2), data()[:20], epochs=1, batch_size=10,
                checkpoint_dir=folder, compile=False)
    raw = bytearray((folder / CHECKPOINT_FILE).read_bytes())
    for where, xor in flips:
        raw[int(where * (len(raw) - 1))] ^= xor
    damaged = folder / "damaged.safetensors"
    damaged.write_bytes(bytes(raw[:max(1, int(cut * len(raw))) if cut < 1 else len(raw)]))
    try:
        state = funcvae.load(damaged)
    except ValueError as e:
        assert str(damaged) in str(e)
    else:
        assert funcvae.contract.stack_size(state.params) is None
