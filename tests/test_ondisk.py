"""A training set memory-mapped from disk (``np.load(path, mmap_mode="r")``) stays in its file: fit reads each
batch from it and gives the params, history and fingerprint of the same levels in memory, bit for bit; runs
resume across the two forms; its values are checked block by block; and reading it leaves the file's pages
out of the process's resident memory."""

import importlib
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import funcvae
from funcvae import inputs, objectives, ondisk
from funcvae.batches import epoch_batches
from funcvae.distributions import check_support
from funcvae.ondisk import OnDisk

from test_uint8_data import spy_batches  # fit's training set and each batch's x, as model_batches gets them

LOOP = importlib.import_module("funcvae._train.loop")
FOLDER = importlib.import_module("funcvae._train.folder")
SMALL = dict(hidden=(16,), latent=3)
RUN = dict(epochs=2, batch_size=64, compile=False, progress=False, share_cores=False)


def levels(n=200, seed=0, dtype=np.uint8, shape=(1, 28, 28)) -> np.ndarray:
    """(n, *shape) 8-bit levels in ``dtype``, both ends of the range among them."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(dtype)
    x.reshape(n, -1)[0, :2] = [0, 255]
    return x


def mapped(tmp_path, x: np.ndarray, name="x.npy") -> np.memmap:
    """``x`` saved as .npy and opened again as a read-only memory map."""
    np.save(tmp_path / name, x)
    return np.load(tmp_path / name, mmap_mode="r")


def same(a, b) -> bool:
    """The same params, bit for bit (NaN payloads and signed zeros included)."""
    return LOOP.same_bits(a, b)


def without_seconds(history: list) -> list:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# -- Reading rows -------------------------------------------------------------------------------------------

VIEWS = {"whole": lambda m: m, "slice": lambda m: m[37:180], "every third": lambda m: m[::3],
         "reversed": lambda m: m[::-1], "flat": lambda m: m.reshape(len(m), -1)}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("dtype", [np.uint8, np.dtype(">i2"), np.int64, np.bool_])
def test_rows_read_from_the_file_are_the_rows_in_memory(tmp_path, view, dtype):
    x = levels(dtype=dtype)
    mm = VIEWS[view](mapped(tmp_path, x))
    held = torch.from_numpy(np.array(mm).astype(np.uint8)).reshape(len(mm), -1)
    rows = OnDisk(mm, 784, torch.device("cpu"))
    assert rows.shape == held.shape and rows.dtype == torch.uint8
    # Random rows, a repeated one, and a run of neighbours in order and out of it.
    index = torch.cat([torch.randperm(len(mm))[:40], torch.tensor([5, 5, 6, 7, 8, 12, 11, 10])])
    assert torch.equal(rows.index_select(0, index), held.index_select(0, index))
    assert torch.equal(torch.cat(list(rows.split(7))), held)
    assert (rows.min(), rows.max()) == (int(held.min()), int(held.max()))
    with pytest.raises(IndexError, match=r"out of range \[0, "):
        rows.index_select(0, torch.tensor([len(mm)]))


def resident() -> int:
    """This process's resident memory, in bytes (Linux)."""
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident memory from /proc")
def test_reading_leaves_the_files_pages_out_of_resident_memory(tmp_path, monkeypatch):
    # Gathered through the map, every page touched counts in the resident set; read from the file, they stay
    # in the page cache. 64 MiB read whole, in blocks and in batches: the resident set must not grow by a
    # quarter of it, while one pass through the map does grow it by more than half.
    n = 2**26 // 784
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(n, 784))
    for i in range(0, n, 8192):
        mm[i:i + 8192] = i % 251
    mm.flush()
    del mm
    monkeypatch.setattr(ondisk, "BLOCK_BYTES", 1 << 20)
    mm = np.load(tmp_path / "big.npy", mmap_mode="r")
    rows = OnDisk(mm, 784, torch.device("cpu"))
    before = resident()
    rows.max()
    for block in rows.split(1024):
        assert block.shape[1] == 784
    for index in torch.randperm(n).split(4096):
        rows.index_select(0, index)
    assert resident() - before < 2**26 // 4
    assert int(mm.max()) == rows.max() and resident() - before > 2**26 // 2


# -- fit ----------------------------------------------------------------------------------------------------

CASES = {
    "uint8": (dict(), np.uint8),
    "int64 in [0, 255]": (dict(), np.int64),
    "dynamic binarisation": (dict(binarize="dynamic"), np.uint8),
    "stack": (dict(lr=[1e-3, 3e-3], beta=[0.5, 2.0]), np.uint8),
    "iwae": (dict(objective=objectives.iwae(2)), np.uint8),
}


@pytest.mark.parametrize("case", CASES)
def test_fit_on_a_memory_map_equals_fit_on_it_in_memory(tmp_path, monkeypatch, case):
    settings, dtype = CASES[case]
    params = funcvae.init(seed=0, **SMALL)
    params = funcvae.stack([params, params]) if case == "stack" else params
    x = levels(dtype=dtype)
    seen = spy_batches(monkeypatch)
    got = funcvae.fit(params, mapped(tmp_path, x), scale=255, **RUN, **settings)
    assert isinstance(seen[0], OnDisk) and seen[1].dtype == (torch.float32 if "binarize" in settings else torch.uint8)
    want = funcvae.fit(params, torch.from_numpy(np.load(tmp_path / "x.npy")), scale=255, **RUN, **settings)
    assert same(got[0], want[0])
    histories = (got[1], want[1]) if case != "stack" else (sum(got[1], []), sum(want[1], []))
    assert without_seconds(histories[0]) == without_seconds(histories[1])


def test_binary_levels_without_a_scale_and_a_conditional_model(tmp_path):
    x, labels = levels() > 127, torch.arange(200) % 3
    params = funcvae.init(seed=0, context=3, **SMALL)
    got = funcvae.fit(params, mapped(tmp_path, x), context=labels, **RUN)
    want = funcvae.fit(params, torch.from_numpy(x), context=labels, **RUN)
    assert same(got[0], want[0])


@pytest.mark.parametrize("binarize", [None, "dynamic"])
def test_data_parallel_shards_read_from_the_file_are_those_of_the_levels_in_memory(tmp_path, binarize):
    mm = mapped(tmp_path, levels(130))  # 130 = 2 * 64 + 2: the last batch padded
    held = torch.from_numpy(np.array(mm)).reshape(130, -1)
    rows = OnDisk(mm, 784, torch.device("cpu"))
    for shard in [(0, 1), (0, 2), (1, 2)]:
        on_disk, in_memory = (list(epoch_batches(x, 64, torch.Generator().manual_seed(0), 3, binarize, shard=shard,
                                                 scale=255, dtype=torch.float32)) for x in (rows, held))
        assert len(on_disk) == 3 and all(torch.equal(a, b) for p, q in zip(on_disk, in_memory)
                                          for a, b in zip(p[:3], q[:3]))


# -- Fingerprint and resume ---------------------------------------------------------------------------------

def test_the_fingerprint_of_a_memory_map_is_that_of_its_levels_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(FOLDER, "FINGERPRINT_ROWS", 7)  # many chunks, the last one short
    mm = mapped(tmp_path, levels(dtype=np.int16))
    held = torch.from_numpy(np.array(mm).astype(np.uint8)).reshape(200, -1)
    on_disk = FOLDER.data_fingerprint(OnDisk(mm, 784, torch.device("cpu")), 255, torch.float32)
    assert on_disk == FOLDER.data_fingerprint(held, 255, torch.float32)
    assert on_disk == FOLDER.data_fingerprint((held.to(torch.float64) / 255).float(), None, torch.float32)


class StopAt:
    """model_batches that send this process SIGINT as batch ``at`` is handed out: fit stops after that step."""

    def __init__(self, monkeypatch, at: int):
        real = LOOP.model_batches

        def batches(*args, **kwargs):
            for b, batch in enumerate(real(*args, **kwargs)):
                if b == at:
                    signal.raise_signal(signal.SIGINT)
                yield batch
        monkeypatch.setattr(LOOP, "model_batches", batches)


@pytest.mark.parametrize("first,then", [("memory", "file"), ("file", "memory")])
def test_a_run_stopped_mid_epoch_resumes_on_the_other_form_of_its_data(tmp_path, monkeypatch, first, then):
    mm = mapped(tmp_path, levels())
    forms = {"file": lambda: mm, "memory": lambda: torch.from_numpy(np.load(tmp_path / "x.npy"))}
    run = dict(RUN, scale=255, binarize="dynamic")
    whole = funcvae.fit(funcvae.init(seed=0, **SMALL), forms["memory"](), **run)
    with monkeypatch.context() as patch:
        StopAt(patch, 1)
        with pytest.raises(funcvae.Interrupted):
            funcvae.fit(funcvae.init(seed=0, **SMALL), forms[first](), checkpoint_dir=tmp_path / "run", **run)
    state = funcvae.load(tmp_path / "run" / funcvae.CHECKPOINT_FILE)
    assert (state.epoch, state.step) == (0, 2)
    resumed = funcvae.fit(funcvae.init(seed=0, **SMALL), forms[then](), checkpoint_dir=tmp_path / "run",
                          resume=True, **run)
    assert same(resumed[0], whole[0]) and without_seconds(resumed[1]) == without_seconds(whole[1])


# -- Bad data -----------------------------------------------------------------------------------------------

def test_integers_outside_the_8_bit_range_are_named_before_any_work(tmp_path):
    x = levels(dtype=np.int16)
    x[3, 0, 2, 5] = 300
    x[150, 0, 0, 0] = -4
    with pytest.raises(ValueError, match=re.escape(
            "data is a memory map of int16 with values in [-4, 300]: fit reads a memory-mapped training set from "
            "its file as 8-bit pixel levels only, in [0, 255] (the first value outside is 300, at index (3, 61))")):
        funcvae.fit(funcvae.init(seed=0, **SMALL), mapped(tmp_path, x), scale=255, **RUN)


@pytest.mark.parametrize("x,scale,message", [
    (levels(), None, r"data is integer \(uint8, a memory map\) with values in \[0, 255\], outside \[0, 1\]; state "
                     r"the scale, e\.g\. scale=255 for 8-bit pixels \(the first value outside is 255, at index "
                     r"\(0, 1\)\)"),
    (levels() > 127, 255, r"scale divides 8-bit pixel levels .* but data are bool"),
    (levels() // 255, 255, r"but data are all within \[0, 1\]"),
    (levels(dtype=np.float32) / 255, None, r"data is a memory map of float32: fit reads a memory-mapped training "
                                           r"set from its file batch by batch as integer pixel levels only .* or "
                                           r"pass np\.array\(data\) to train on them in memory"),
    (levels(shape=(784,))[:, None], 255, r"data has shape \(200, 1, 784\); params built for 1x28x28 inputs"),
    (levels()[:0], 255, r"data is empty \(shape \(0, 1, 28, 28\)\)"),
])
def test_bad_memory_maps_are_refused_with_the_in_memory_messages(tmp_path, x, scale, message):
    with pytest.raises(ValueError, match=message):
        funcvae.fit(funcvae.init(seed=0, **SMALL), mapped(tmp_path, x), scale=scale, **RUN)


def test_levels_outside_the_support_are_named_in_the_checks_words_on_the_first_example_holding_one(tmp_path):
    # scale 100: levels above 100 are values above 1, outside the Bernoulli likelihood's support; example 0
    # holds 255 at feature 1.
    mm = mapped(tmp_path, levels())
    first = torch.from_numpy(np.array(mm[0])).reshape(-1).to(torch.float64).div(100).float()
    with pytest.raises(ValueError) as in_words:
        check_support("bernoulli", first, name="data's example 0")
    assert "at index (1,)" in str(in_words.value)
    with pytest.raises(ValueError) as on_disk:
        funcvae.fit(funcvae.init(seed=0, **SMALL), mm, scale=100, **RUN)
    assert str(on_disk.value) == str(in_words.value)


def test_a_support_that_is_no_interval_refuses_only_the_levels_the_file_holds(tmp_path):
    def even(values, name):  # a support with holes: the odd numbers are refused
        if bool((values % 2 == 1).any()):
            raise ValueError(f"{name} holds odd values")
    x = levels(dtype=np.int64) // 2 * 2
    rows = OnDisk(mapped(tmp_path, x), 784, torch.device("cpu"))
    inputs.check_values(rows, 1, torch.float32, "data", even)  # levels 0..254, the odd ones refused, none held
    x[37, 0, 0, 5] = 3
    rows = OnDisk(mapped(tmp_path, x, "odd.npy"), 784, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^data's example 37 holds odd values$"):
        inputs.check_values(rows, 1, torch.float32, "data", even)


def test_a_copy_on_write_map_is_an_array_like_any_other(tmp_path):
    np.save(tmp_path / "x.npy", levels())
    changed = np.load(tmp_path / "x.npy", mmap_mode="c")
    changed[0] = 7  # in this process only: the file still holds the old rows
    assert not ondisk.is_mapped(changed) and ondisk.is_mapped(np.load(tmp_path / "x.npy", mmap_mode="r"))
    got = funcvae.fit(funcvae.init(seed=0, **SMALL), changed, scale=255, **RUN)
    want = funcvae.fit(funcvae.init(seed=0, **SMALL), torch.from_numpy(np.array(changed)), scale=255, **RUN)
    assert same(got[0], want[0])
