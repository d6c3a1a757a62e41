"""Whole training processes: SIGKILL at random points then resume (the final params always equal the
uninterrupted run's, every checkpoint on disk stays readable), SIGTERM/SIGINT handled at a step boundary,
and two data-parallel processes under torchrun giving the params of one."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import funcvae
from funcvae.train import CHECKPOINT_FILE

WORKER = Path(__file__).parent / "workers" / "fit_worker.py"
KILLS = 12
EPOCHS, STEPS_PER_EPOCH = 4, 12  # the worker's 600 examples in batches of 50


def start(ckpt: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(ckpt), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(ckpt: Path, out: Path) -> None:
    proc = start(ckpt, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


def leaves(path: Path) -> dict:
    return funcvae.leaves_by_path(funcvae.load_params(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run's final params."""
    folder = tmp_path_factory.mktemp("reference")
    finish(folder / "ckpt", folder / "out.safetensors")
    return leaves(folder / "out.safetensors")


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until ``path`` exists; fails if the process ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {path.name} appeared: "
                        f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.005)


def wait_for_step(path: Path, proc: subprocess.Popen, target: int, timeout: float = 120.0) -> None:
    """Until the checkpoint has reached global step ``target`` (or the process ended); fails after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            pytest.fail(f"the checkpoint did not reach step {target} within {timeout} s")
        try:
            state = funcvae.load(path)
            if state.epoch * STEPS_PER_EPOCH + state.step >= target:
                return
        except (FileNotFoundError, ValueError):
            pass  # not written yet
        time.sleep(0.002)


def test_sigkill_at_random_points_then_resume_always_ends_at_the_same_params(tmp_path, reference):
    # One run killed again and again, each process resuming what the last one left: KILLS kills for KILLS + 1
    # process starts, and every resume but the first starts from a resumed run's checkpoint.
    rng = random.Random(0)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.safetensors"
    killed_mid_run, resumed_from = 0, set()
    for target in sorted(rng.sample(range(1, EPOCHS * STEPS_PER_EPOCH), KILLS)):
        proc = start(ckpt, out)
        wait_for_step(ckpt / CHECKPOINT_FILE, proc, target)
        time.sleep(rng.uniform(0.0, 0.02))  # anywhere in the step or the checkpoint write that follows
        proc.kill()  # SIGKILL: no handler runs
        proc.communicate()
        killed_mid_run += proc.returncode == -signal.SIGKILL and not out.exists()
        state = funcvae.load(ckpt / CHECKPOINT_FILE)  # never unreadable, whenever the kill came
        resumed_from.add((state.epoch, state.step))
    finish(ckpt, out)
    assert os.listdir(ckpt) == [CHECKPOINT_FILE]  # a write cut short leaves a temporary file; resume removes it
    got = leaves(out)
    for path, t in reference.items():
        assert torch.equal(got[path], t), path
    # The kills really landed inside training, at many different points.
    assert killed_mid_run >= KILLS - 2 and len(resumed_from) >= KILLS // 2, (killed_mid_run, resumed_from)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_exits_cleanly_then_resume_matches(tmp_path, reference, signum):
    # The run waits at the end of its first epoch until told to go on, so the signal always comes mid-run.
    ckpt, out, gate = tmp_path / "ckpt", tmp_path / "out.safetensors", tmp_path / "gate"
    gate.mkdir()
    proc = start(ckpt, out, "--pause", str(gate))
    wait_for(gate / "paused", proc)
    proc.send_signal(signum)
    (gate / "go").touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name} at a step boundary" in err
    assert "Traceback" not in err
    funcvae.load(ckpt / CHECKPOINT_FILE)
    finish(ckpt, out)
    got = leaves(out)
    assert all(torch.equal(got[p], t) for p, t in reference.items())


def test_two_data_parallel_processes_give_the_params_of_one(tmp_path, reference):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(ckpt), str(out), "--every", "5"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = leaves(out)
    for path, t in reference.items():
        # Summing two half-batch gradients instead of one batch's reorders float additions; nothing more.
        torch.testing.assert_close(got[path], t, rtol=1e-4, atol=1e-5, msg=path)
    state = funcvae.load(ckpt / CHECKPOINT_FILE)  # written by rank 0 alone
    assert state.epoch == 4


def test_data_parallel_processes_that_start_from_different_params_are_refused(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(tmp_path / "ckpt"), str(tmp_path / "out.safetensors"), "--seed-by-rank"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "the 2 processes start from different params" in proc.stderr
    assert not (tmp_path / "ckpt" / CHECKPOINT_FILE).exists()


def test_a_second_process_on_a_held_folder_is_refused_and_no_checkpoint_is_mixed(tmp_path, reference):
    ckpt, out, gate = tmp_path / "ckpt", tmp_path / "out.safetensors", tmp_path / "gate"
    gate.mkdir()
    first = start(ckpt, out, "--pause", str(gate))
    wait_for(gate / "paused", first)
    live = ckpt / f".{CHECKPOINT_FILE}.live.tmp"  # as if the first run were mid-write
    live.write_bytes(b"partial")
    second = subprocess.run([sys.executable, str(WORKER), str(ckpt), str(tmp_path / "second.safetensors")],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 3, second.stderr
    assert f"is in use by another run (pid {first.pid}" in second.stderr
    assert live.read_bytes() == b"partial" and not (tmp_path / "second.safetensors").exists()
    live.unlink()
    (gate / "go").touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    got = leaves(out)
    assert all(torch.equal(got[p], t) for p, t in reference.items())  # the first run, untouched by the second
    assert funcvae.load(ckpt / CHECKPOINT_FILE).epoch == EPOCHS
