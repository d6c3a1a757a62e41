"""fit and its checkpoint folder: checked and locked before any work, never replaced unless asked, no epoch
lost to a non-finite metric or a late signal, and no silent wait for peers that will never come."""

import math
import os
import signal
import socket
import time
import warnings

import pytest
import torch

import funcvae
import funcvae._train.folder as FOLDER
import funcvae._train.loop as LOOP
import funcvae._train.watch as WATCH
from funcvae._runtime import lock, records
from funcvae.train import CHECKPOINT_FILE

SMALL = dict(hidden=(16,), latent=3)


def data(n=200, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def fit(folder, epochs=1, **kw):
    kw = {"batch_size": 50, "compile": False, "checkpoint_dir": folder, **kw}
    return funcvae.fit(funcvae.init(seed=0, **SMALL), kw.pop("x", data()), epochs=epochs, **kw)


class Never:
    """A callback that fails the test if an epoch completes: the error must come before any work."""

    def __call__(self, record):
        raise AssertionError("an epoch ran before the error")


# -- Silent overwrites --------------------------------------------------------------------------------------

def test_a_checkpoint_is_not_replaced_unless_the_call_says_so(tmp_path):
    fit(tmp_path, 2)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(ValueError, match=r"already holds a checkpoint: pass resume=True .* or overwrite=True"):
        fit(tmp_path, 1, callbacks=[Never()])
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
    _, history = fit(tmp_path, 1, overwrite=True, seed=5)
    assert funcvae.load(tmp_path / CHECKPOINT_FILE).epoch == 1 and len(history) == 1
    with pytest.raises(ValueError, match=r"resume=True continues the checkpoint and overwrite=True replaces it"):
        fit(tmp_path, 1, overwrite=True, resume=True)


def test_a_folder_held_by_another_process_is_refused_naming_the_holder(tmp_path):
    # The holder is simulated by a descriptor of this process's own: flock locks belong to open files, so a
    # second open file of the same process is refused as another process would be.
    import fcntl
    fd = os.open(tmp_path / lock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, records.dumps({"pid": 4242, "host": "elsewhere", "command": "train.py"}).encode())
    live = tmp_path / f".{CHECKPOINT_FILE}.abc123.tmp"  # the holder's write in progress
    live.write_bytes(b"partial")
    try:
        with pytest.raises(funcvae.FolderLocked, match=r"in use by another run \(pid 4242, host elsewhere, command "
                                                       r"train.py\)"):
            fit(tmp_path, 1, callbacks=[Never()])
        assert live.read_bytes() == b"partial"  # its temporary file was not cleaned up from under it
    finally:
        os.close(fd)
    _, history = fit(tmp_path, 1, overwrite=True)  # released: the folder is free again
    assert len(history) == 1 and not live.exists() and sorted(os.listdir(tmp_path)) == [CHECKPOINT_FILE]


def test_the_lock_is_reentrant_within_a_process_and_released_after_an_error(tmp_path):
    with lock.hold(tmp_path):
        _, history = fit(tmp_path, 1)  # a command that holds the folder runs fit inside it
        assert len(history) == 1 and (tmp_path / lock.LOCK_FILE).exists()
    assert not (tmp_path / lock.LOCK_FILE).exists()
    with pytest.raises(funcvae.callbacks.CallbackError, match="ZeroDivisionError"):
        fit(tmp_path, 2, resume=True, callbacks=[lambda r: 1 / 0])
    with lock.hold(tmp_path):
        pass


# -- Path problems, found before any work ------------------------------------------------------------------

@pytest.mark.parametrize("where, message", [
    ("a-file", r"checkpoint_dir .* is a file, not a folder"),
    ("under-a-file", r"checkpoint_dir .* cannot be written: Not a directory"),
    ("checkpoint-is-a-folder", r"checkpoint.safetensors is not a file"),
])
def test_a_bad_checkpoint_path_fails_before_any_work(tmp_path, where, message):
    (tmp_path / "file").write_text("x")
    folder = {"a-file": tmp_path / "file", "under-a-file": tmp_path / "file" / "run",
              "checkpoint-is-a-folder": tmp_path / "run"}[where]
    if where == "checkpoint-is-a-folder":
        (folder / CHECKPOINT_FILE).mkdir(parents=True)
    with pytest.raises(ValueError, match=message):
        fit(folder, 1, callbacks=[Never()])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_before_any_work(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ValueError, match=r"cannot be written: Permission denied"):
            fit(tmp_path, 1, callbacks=[Never()])
    finally:
        tmp_path.chmod(0o755)


def test_a_folder_that_cannot_be_written_fails_before_any_work(tmp_path, monkeypatch):
    # What a read-only folder does for a user who is not root (the suite may run as root, who writes anyway).
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(FOLDER.tempfile, "mkstemp", refuse)
    with pytest.raises(ValueError, match=r"checkpoint_dir .* cannot be written: Permission denied"):
        fit(tmp_path, 1, callbacks=[Never()])


# -- Fewer epochs than done ----------------------------------------------------------------------------------

def test_resuming_with_fewer_epochs_than_done_is_refused(tmp_path):
    params, _ = fit(tmp_path, 3)
    with pytest.raises(ValueError, match=r"holds 3 epoch\(s\), more than epochs=2; ask for epochs >= 3"):
        fit(tmp_path, 2, resume=True)
    same, history = fit(tmp_path, 3, resume=True)  # as many as done: the run as it is
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(funcvae.leaves_by_path(same).values(),
                                                  funcvae.leaves_by_path(params).values()))


def test_resuming_mid_epoch_with_only_the_epochs_done_is_refused(tmp_path):
    def stop(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # before epoch 2 is saved: step 2 of epoch 2 is on disk
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, 2, checkpoint_every=6, callbacks=[stop])
    with pytest.raises(ValueError, match=r"holds 1 epoch\(s\) and 2 step\(s\), more than epochs=1; ask for epochs >= 2"):
        fit(tmp_path, 1, resume=True)


# -- A late signal ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("during", ["evaluation", "write"])
def test_a_signal_during_the_last_epochs_evaluation_or_write_is_not_swallowed(tmp_path, monkeypatch, signum, during):
    owner, name = (LOOP, "evaluate") if during == "evaluation" else (FOLDER, "save")
    real = getattr(owner, name)
    calls = []

    def late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # epoch 2 of 2
            signal.raise_signal(signum)
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, late)
    with pytest.raises(funcvae.Interrupted) as info:
        fit(tmp_path, 2, val_data=data(40, 1))
    assert info.value.signum == signum
    assert funcvae.load(tmp_path / CHECKPOINT_FILE).epoch == 2  # the whole run is on disk


def test_a_signal_between_epochs_stops_at_the_epoch_boundary(tmp_path, monkeypatch):
    real, calls = LOOP.evaluate, []

    def late(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)
    monkeypatch.setattr(LOOP, "evaluate", late)
    with pytest.raises(funcvae.Interrupted):
        fit(tmp_path, 3, val_data=data(40, 1))
    state = funcvae.load(tmp_path / CHECKPOINT_FILE)
    assert (state.epoch, state.step) == (1, 0)


# -- Non-finite metrics -----------------------------------------------------------------------------------

def poisoned(monkeypatch, bad: set):
    """Every epoch's batches ``bad`` hold a NaN pixel (so their steps are skipped under "skip")."""
    real = LOOP.model_batches

    def batches(*args, **kwargs):
        for b, (x, eps, w, c) in enumerate(real(*args, **kwargs), start=kwargs.get("start", 0)):
            if b in bad:
                x = x.clone()
                x[0, 0] = math.nan
            yield x, eps, w, c
    monkeypatch.setattr(LOOP, "model_batches", batches)


def same_history(a, b):
    return records.dumps(a) == records.dumps(b)  # NaN equals NaN here


def test_an_epoch_with_every_step_skipped_is_kept_and_named(tmp_path, monkeypatch):
    poisoned(monkeypatch, {0, 1, 2, 3})
    with pytest.warns(RuntimeWarning, match=r"epoch 1: recon, kl, loss not finite: every one of its 4 steps was "
                                            r"skipped as non-finite"):
        _, history = fit(tmp_path, 1, on_nonfinite="skip")
    assert history[0]["skipped"] == 4 and math.isnan(history[0]["recon"])
    saved = funcvae.load(tmp_path / CHECKPOINT_FILE)
    assert saved.epoch == 1 and same_history(saved.history[0], history)
    text = (tmp_path / CHECKPOINT_FILE).read_bytes()
    assert b'\\"recon\\": \\"NaN\\"' in text  # the documented form, inside strict JSON


def test_a_huge_learning_rate_under_skip_loses_no_epoch(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, history = fit(tmp_path, 2, on_nonfinite="skip", lr=1e30, val_data=data(40, 1))
    saved = funcvae.load(tmp_path / CHECKPOINT_FILE)
    assert saved.epoch == 2 and same_history(saved.history[0], history)


def test_epoch_sums_of_finite_steps_do_not_overflow(tmp_path, monkeypatch):
    # Each step's float32 sums near float32's largest value: finite, though their epoch total is not in float32.
    real = WATCH.accumulate

    def huge(acc, stats):
        return real(acc, torch.tensor([3e38, 1.0, 3e38, float(stats[..., 3]), 1.0]).view_as(stats))
    monkeypatch.setattr(WATCH, "accumulate", huge)
    _, history = fit(tmp_path, 1)
    assert history[0]["recon"] == pytest.approx(4 * 3e38 / 200, rel=1e-6)
    assert funcvae.load(tmp_path / CHECKPOINT_FILE).history[0] == history


# -- A stray WORLD_SIZE ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stray_world_size_says_what_it_waits_for_and_times_out(monkeypatch, capsys):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                 "FUNCVAE_DIST_TIMEOUT": "1"}.items():
        monkeypatch.setenv(k, v)
    began = time.monotonic()
    with pytest.raises(RuntimeError, match=r"data-parallel fit could not start \(WORLD_SIZE=2, RANK=0, .*unset "
                                           r"WORLD_SIZE and RANK to train in one process"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=1, batch_size=50, compile=False)
    assert time.monotonic() - began < 30
    assert "waiting up to 1 s for the 2 processes" in capsys.readouterr().err
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, r"environment variable RANK expected"),
    ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' in the environment is not a number of processes"),
    ({"WORLD_SIZE": "2", "FUNCVAE_DIST_TIMEOUT": "-1"}, r"FUNCVAE_DIST_TIMEOUT='-1': must be a number of seconds"),
])
def test_an_environment_that_describes_no_process_group_is_a_clear_error(monkeypatch, env, message):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match=message):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=1, batch_size=50, compile=False)
