"""Checkpoints and exact resume: at epoch boundaries, mid-epoch, after a signal, across processes."""

import os
import signal

import pytest
import torch

import funcvae
from funcvae.train import CHECKPOINT_FILE

SMALL = dict(hidden=(32,), latent=4)


def data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.rand(60, 784, generator=g)


def run(tmp, epochs, **kw):
    x, x_val = data()
    kw.setdefault("compile", False)
    return funcvae.fit(funcvae.init(seed=0, **SMALL), x, epochs=epochs, batch_size=64, val_data=x_val, seed=3,
                       kl_warmup=1, checkpoint_dir=tmp, **kw)


def assert_same(a, b):
    for path, t in funcvae.leaves_by_path(a).items():
        assert torch.equal(t, funcvae.leaves_by_path(b)[path]), path


def without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resuming_at_an_epoch_boundary_is_bit_identical(tmp_path):
    whole, h_whole = run(tmp_path / "a", 3)
    run(tmp_path / "b", 1)
    resumed, h_resumed = run(tmp_path / "b", 3, resume=True)
    assert_same(resumed, whole)
    assert without_seconds(h_resumed) == without_seconds(h_whole)


class SignalAtCall:
    """A compile backend that runs the graph unchanged and sends ``signum`` to this process at call ``n``."""

    def __init__(self, n=None, signum=signal.SIGINT):
        self.n, self.signum, self.calls = n, signum, 0

    def __call__(self, gm, example_inputs):
        def forward(*args):
            self.calls += 1
            if self.calls == self.n:
                signal.raise_signal(self.signum)
            return gm.forward(*args)
        return forward


@pytest.mark.parametrize("signum, at_call", [(signal.SIGINT, 3), (signal.SIGTERM, 7), (signal.SIGINT, 5)])
def test_a_signal_stops_at_the_next_step_and_resume_is_bit_identical(tmp_path, signum, at_call):
    whole, h_whole = run(tmp_path / "a", 2, compile=SignalAtCall())
    with pytest.raises(funcvae.Interrupted) as stopped:
        # One thread count throughout: a new count's check runs a step once more, which the count of calls
        # would take for the next step.
        run(tmp_path / "b", 2, compile=SignalAtCall(at_call, signum), share_cores=False)
    assert stopped.value.signum == signum
    state = funcvae.load(tmp_path / "b" / CHECKPOINT_FILE)
    assert (state.epoch, state.step) == divmod(at_call, 5)  # 300 examples / 64 = 5 steps per epoch
    resumed, h_resumed = run(tmp_path / "b", 2, resume=True, compile=SignalAtCall())
    assert_same(resumed, whole)
    assert without_seconds(h_resumed) == without_seconds(h_whole)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_checkpoint_every_writes_mid_epoch_states_that_resume_exactly(tmp_path):
    whole, _ = run(tmp_path / "a", 2)
    run(tmp_path / "b", 2, checkpoint_every=3)
    state = funcvae.load(tmp_path / "b" / CHECKPOINT_FILE)
    assert (state.epoch, state.step) == (2, 0) and len(state.history[0]) == 2
    # Rebuild the state after step 3 by training 3 steps' worth and stopping there.
    with pytest.raises(funcvae.Interrupted):
        run(tmp_path / "c", 2, compile=SignalAtCall(3), share_cores=False)  # one count: calls are steps
    mid = funcvae.load(tmp_path / "c" / CHECKPOINT_FILE)
    assert (mid.epoch, mid.step) == (0, 3) and mid.rng is not None and mid.sums is not None
    resumed, _ = run(tmp_path / "c", 2, resume=True, checkpoint_every=3)
    assert_same(resumed, whole)


def test_the_checkpoint_holds_everything_a_run_needs(tmp_path):
    params, history = run(tmp_path, 2)
    state = funcvae.load(tmp_path / CHECKPOINT_FILE)
    assert_same(state.params, params)
    assert state.epoch == 2 and state.step == 0 and state.rng is None
    assert int(state.train.count) == 10 and int(state.train.opt_state["inner/count"]) == 10
    assert without_seconds(state.history[0]) == without_seconds(history)
    assert state.config["seed"] == [3] and state.config["batch_size"] == 64
    assert state.config["optimizer"] == [funcvae.optim.apply_if_finite(funcvae.optim.adam(1e-3), freeze=True).name]
    assert state.config["objective"] == [funcvae.objectives.elbo(
        1.0, warmup=funcvae.schedules.warmup(1 * 5)).name]


def test_resume_refuses_other_settings_or_data(tmp_path):
    run(tmp_path, 1)
    with pytest.raises(ValueError, match=r"other settings or data \(optimizer: checkpoint \['apply_if_finite\(adam\(lr=0.001,"
                                         r".*now \['apply_if_finite\(adam\(lr=0.002,"):
        run(tmp_path, 2, resume=True, lr=2e-3)
    x, x_val = data(seed=1)
    with pytest.raises(ValueError, match=r"data: checkpoint"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), x, epochs=2, batch_size=64, val_data=x_val, seed=3, kl_warmup=1,
                    checkpoint_dir=tmp_path, resume=True, compile=False)


def test_resume_of_a_finished_run_returns_it_without_training(tmp_path):
    params, history = run(tmp_path, 2)
    again, h_again = run(tmp_path, 2, resume=True, compile=lambda gm, inputs: pytest.fail("trained again"))
    assert_same(again, params)
    assert without_seconds(h_again) == without_seconds(history)


def test_resume_needs_a_checkpoint_dir():
    x, _ = data()
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), x, epochs=1, resume=True)


def test_a_checkpoint_write_that_fails_leaves_the_previous_one(tmp_path, monkeypatch):
    run(tmp_path, 1)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(funcvae.checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, 2, resume=True)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    assert os.listdir(tmp_path) == [CHECKPOINT_FILE]


def test_resume_with_another_kind_of_optimiser_names_the_setting_not_its_leaves(tmp_path):
    run(tmp_path, 1)
    x, x_val = data()
    with pytest.raises(ValueError, match=r"other settings or data \(optimizer: checkpoint \['apply_if_finite\(adam"
                                         r".*now \['apply_if_finite\(sgd"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), x, epochs=2, batch_size=64, val_data=x_val, seed=3, kl_warmup=1,
                    checkpoint_dir=tmp_path, resume=True, optimizer=funcvae.optim.sgd(1e-2, momentum=0.9),
                    compile=False)
