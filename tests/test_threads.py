"""fit on a shared machine: the cores other processes keep busy are left to them, never fewer than one thread or
more than torch's setting, the setting is restored, and the number of threads does not change the results: a
count is used only once the step has given the same bits on it."""

import itertools
import math
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import funcvae
from funcvae._runtime import compiling, gemm, threads


@given(others=st.floats(0, 64), most=st.integers(1, 64), cores=st.integers(1, 64))
def test_the_threads_are_the_cores_left_within_bounds(others, most, cores):
    n = threads.threads_for(others, most, cores)
    assert 1 <= n <= most
    assert n == 1 or n == most or n == cores - round(others)


def test_other_processes_time_is_the_machines_less_ours():
    before = threads.Sample(wall=10.0, busy=100.0, own=5.0)
    after = threads.Sample(wall=12.0, busy=104.0, own=7.0)  # 2 s: 4 CPU-s busy, 2 of them ours
    assert threads.others_busy(before, after) == pytest.approx(1.0)
    assert threads.others_busy(after, after) == 0.0
    assert threads.others_busy(before, threads.Sample(12.0, 101.0, 7.0)) == 0.0  # tick rounding: never negative


def test_a_sample_reads_the_machines_busy_ticks(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  300 10 90 5000 40 0 0 60 0 0\ncpu0 150 5 45 2500 20 0 0 30 0 0\n")
    monkeypatch.setattr(threads, "_STAT", stat)
    got = threads.sample()
    assert got.busy == pytest.approx(400 / threads._TICKS)
    monkeypatch.setattr(threads, "_STAT", tmp_path / "absent")
    assert threads.sample() is None


def _fake_machine(monkeypatch, others: float) -> list:
    """A clock (a one-element list of seconds to set) and a machine where ``others`` cores are busy with other
    processes all along."""
    clock = [1000.0]
    monkeypatch.setattr(threads, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(threads, "sample", lambda: threads.Sample(clock[0], others * clock[0], 0.0))
    return clock


def _same() -> bool:
    return True


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to drop to one")
def test_a_count_that_changes_the_bits_is_restored_and_never_tried_again(monkeypatch):
    before, checks = torch.get_num_threads(), []
    clock = _fake_machine(monkeypatch, 64.0)  # every core busy: fit would drop to one thread

    def differs() -> bool:
        checks.append(torch.get_num_threads())
        return False
    with threads.shared_cores(torch.device("cpu")) as look:
        for _ in range(4):
            assert look(differs) is False and torch.get_num_threads() == before
            clock[0] += 1.0
    assert checks == [1]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to drop to one")
def test_a_count_is_checked_once(monkeypatch):
    before, checks, clock = torch.get_num_threads(), [], _fake_machine(monkeypatch, 64.0)

    def same() -> bool:
        checks.append(torch.get_num_threads())
        return True
    with threads.shared_cores(torch.device("cpu")) as look:
        for busy in (64.0, 0.0, 64.0, 0.0):
            monkeypatch.setattr(threads, "sample", lambda b=busy: threads.Sample(clock[0], b * clock[0], 0.0))
            look(same)  # starts a window (the first look, or the one after a change)
            clock[0] += 1.0
            assert look(same) is True
            clock[0] += 1.0
    assert checks == [1]  # the count fit started with needs no check, and 1 was checked once
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("others", [5.0, 0.0])
def test_look_sets_the_threads_and_the_setting_is_restored(monkeypatch, others):
    before = torch.get_num_threads()
    clock = _fake_machine(monkeypatch, others)
    wanted = threads.threads_for(others, before, threads.os.cpu_count())
    with threads.shared_cores(torch.device("cpu")) as look:
        assert look(_same) is False  # the first look only starts a window: the first step may have compiled
        clock[0] += 0.1
        assert look(_same) is False and torch.get_num_threads() == before  # a window shorter than INTERVAL_S
        clock[0] += threads.INTERVAL_S
        assert look(_same) is (wanted != before)
        assert torch.get_num_threads() == wanted
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to drop to one")
def test_the_window_after_a_change_is_not_judged(monkeypatch):
    # The step after a change compiles for the new count, in worker processes that would read as others.
    before = torch.get_num_threads()
    clock = _fake_machine(monkeypatch, 5.0)
    with threads.shared_cores(torch.device("cpu")) as look:
        look(_same)
        clock[0] += 1.0
        assert look(_same) is True and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "sample", lambda: threads.Sample(clock[0], 0.0, 0.0))  # now idle
        clock[0] += 1.0
        assert look(_same) is False and torch.get_num_threads() == 1  # starts the window
        clock[0] += 1.0
        assert look(_same) is True and torch.get_num_threads() == before
    assert torch.get_num_threads() == before


def test_nothing_changes_when_asked_not_to_or_on_another_device(monkeypatch):
    monkeypatch.setattr(threads, "sample", lambda: threads.Sample(0.0, 0.0, 0.0))
    for args in ((torch.device("cpu"), False), (torch.device("meta"), True)):
        with threads.shared_cores(*args) as look:
            assert look(_same) is False
    monkeypatch.setattr(threads, "sample", lambda: None)
    with threads.shared_cores(torch.device("cpu")) as look:
        assert look(_same) is False


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to compare with one")
@pytest.mark.parametrize("compile", [False, None])
def test_one_thread_and_two_give_the_same_bits(compile):
    # Why fit may change its thread count mid-run: the default model's step does not depend on it.
    if compile is None and not compiling.has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on the CPU")
    x = torch.rand(256, 784, generator=torch.Generator().manual_seed(0))
    before, runs = torch.get_num_threads(), []
    try:
        for n in (2, 1):
            torch.set_num_threads(n)
            runs.append(funcvae.fit(funcvae.init(seed=0), x, epochs=1, seed=0, compile=compile, share_cores=False,
                                    progress=False))
    finally:
        torch.set_num_threads(before)
    (a, ha), (b, hb) = runs
    assert all(torch.equal(p, q) for p, q in zip(optree.tree_leaves(a.tree), optree.tree_leaves(b.tree)))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


def test_a_new_thread_count_mid_epoch_checks_the_guards_again(monkeypatch):
    # dynamo's guards include the thread count: the step after a change must run with them, or it fails.
    from funcvae import train

    counts = []

    @contextmanager
    def switching(device, adapt=True):
        calls = itertools.count()

        def look(same):
            counts.append(torch.get_num_threads())
            if next(calls) in (0, 3):  # after the first and the fourth step
                torch.set_num_threads(3 - torch.get_num_threads())
                return True
            return False
        yield look
    monkeypatch.setattr(train, "shared_cores", switching)
    before = torch.get_num_threads()
    x = torch.rand(192, 784, generator=torch.Generator().manual_seed(0))
    try:
        torch.set_num_threads(1)
        _, history = funcvae.fit(funcvae.init(seed=0, hidden=(8,), latent=2), x, epochs=2, batch_size=32,
                                 compile=lambda gm, inputs: gm.forward, progress=False)
    finally:
        torch.set_num_threads(before)
    # Every step ran (12 looks), on 1 thread, then 2 after the first step, then 1 again after the fourth.
    assert counts == [1, 2, 2, 2] + [1] * 8
    assert [h["epoch"] for h in history] == [1, 2] and all(math.isfinite(h["loss"]) for h in history)


def _seesaw(monkeypatch) -> list:
    """A machine whose other processes take every core while fit runs on torch's full count, and none while it
    runs on fewer: fit changes its count at every window. Returns the counts fit sets, in order."""
    most, cores, clock, seen, busy, counts = torch.get_num_threads(), threads.os.cpu_count(), [0.0], [0.0], [0.0], []
    set_threads = torch.set_num_threads

    def perf_counter() -> float:
        clock[0] += 1.0
        return clock[0]

    def sample() -> threads.Sample:
        now = perf_counter()
        busy[0] += cores * (now - seen[0]) if torch.get_num_threads() == most else 0.0
        seen[0] = now
        return threads.Sample(now, busy[0], 0.0)

    def recorded(n: int) -> None:
        counts.append(n)
        set_threads(n)
    monkeypatch.setattr(threads, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(threads, "sample", sample)
    monkeypatch.setattr(torch, "set_num_threads", recorded)
    return counts


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to change between")
@pytest.mark.parametrize("arch,compile", [("mlp", False), ("mlp", None), ("conv", False)])
def test_a_thread_change_mid_run_keeps_the_bits(monkeypatch, arch, compile):
    # A loaded machine, as fit sees it: the same bits as a run that never changes its count.
    if compile is None and not compiling.has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on the CPU")
    fields = {"mlp": {}, "conv": {"arch": "conv", "channels": (4, 8), "latent": 4}}[arch]
    x = torch.rand(256, 784, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()

    def run(share_cores: bool):
        return funcvae.fit(funcvae.init(seed=0, **fields), x, epochs=3, seed=0, compile=compile,
                           share_cores=share_cores, progress=False)
    (a, ha) = run(False)
    counts = _seesaw(monkeypatch)
    (b, hb) = run(True)
    assert torch.get_num_threads() == before
    assert all(torch.equal(p, q) for p, q in zip(optree.tree_leaves(a.tree), optree.tree_leaves(b.tree)))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert 1 in counts  # it tried one thread; for the MLP, whose products do not depend on the count, it kept it
    if arch == "mlp":
        assert counts[:-1] == [(1, before)[i % 2] for i in range(len(counts) - 1)] and len(counts) >= 4


@pytest.mark.skipif(not torch.backends.mkl.is_available() or "MKL_CBWR" in gemm.os.environ,
                    reason="torch without MKL, or a reproducibility mode chosen in the environment")
def test_mkl_multiplies_in_its_strict_reproducible_mode():
    assert gemm.reproducible_mkl()


@pytest.mark.skipif(not torch.backends.mkl.is_available() or "MKL_CBWR" in gemm.os.environ,
                    reason="torch without MKL, or a reproducibility mode chosen in the environment")
def test_mkl_says_when_it_ran_before_funcvae_could_set_its_mode():
    code = ("import torch; a = torch.ones(4, 4); a @ a\n"
            "import funcvae; from funcvae._runtime import gemm; print(gemm.reproducible_mkl())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False"]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads to compare with one")
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 600), k=st.integers(1, 1200), n=st.integers(1, 600), transposed=st.booleans())
def test_a_product_gives_the_same_bits_on_one_thread_and_two(m, k, n, transposed):
    # The eager step's products, as fit's thread check relies on for its speed (not for its bits).
    gen = torch.Generator().manual_seed(m * k * n)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(n, k, generator=gen).t() if transposed else torch.randn(k, n, generator=gen)
    before = torch.get_num_threads()
    try:
        products = []
        for count in (2, 1):
            torch.set_num_threads(count)
            products.append(a @ b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(*products)
