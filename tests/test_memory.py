"""funcvae._runtime.memory: glibc's malloc keeps the blocks an eager step frees, so the next step faults no
fresh page; the eager step on a CPU sets it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcvae
from funcvae import objectives, optim
from funcvae._runtime import compiling, memory

ROUNDS, BLOCKS, FLOATS = 6, 20, 320_000  # 20 blocks of 1.28 MB a round: an eager step's worth for the default model

FAULTS = f"""
import json, resource, torch
from funcvae._runtime.memory import keep_freed_memory

def faults():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        blocks = [torch.ones({FLOATS}) for _ in range({BLOCKS})]  # written, so every page is touched
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

kept = keep_freed_memory()
faults()  # the heap grows once
print(json.dumps([kept, faults()]))
"""


@pytest.mark.skipif(memory.glibc() is None, reason="sets glibc's malloc; elsewhere it changes nothing")
def test_freed_blocks_come_back_without_page_faults():
    # In a fresh process, as a user's first eager fit: its malloc has adapted to nothing yet. Without the
    # setting, glibc gives each round's 26 MB back and faults every page in again (about 6 x 20 x 313).
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    kept, faults = json.loads(out.stdout.splitlines()[-1])
    pages = ROUNDS * BLOCKS * FLOATS * 4 // 4096
    assert kept is True
    assert faults < pages / 100, f"{faults} page faults for {pages} pages of reused blocks"


def test_elsewhere_nothing_is_set(monkeypatch):
    memory.keep_freed_memory.cache_clear()
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    try:
        assert memory.keep_freed_memory() is False
    finally:
        memory.keep_freed_memory.cache_clear()


def test_the_eager_step_on_a_cpu_keeps_freed_memory_and_a_compiled_one_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(compiling, "keep_freed_memory", lambda: calls.append(1))
    step = funcvae.make_train_step(funcvae.init(seed=0).model, objectives.elbo(), optim.adam(1e-3))
    assert compiling.compile_step(step, torch.device("cpu"), False) is step
    assert calls == [1]
    compiling.compile_step(step, torch.device("cpu"), "eager", key=(step.key, "memory test"))
    assert calls == [1]
