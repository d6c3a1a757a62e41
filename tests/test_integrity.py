"""What is on disk is checked before it is trusted: damaged checkpoint and params files are refused naming the
file (a fuzz loop of truncations, bit flips and metadata mutations), resume refuses other data by a real
content digest, and the metadata's every field is checked for type and range."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

import funcvae
from funcvae import checkpoint as C
from funcvae._runtime import files, records
from funcvae.train import CHECKPOINT_FILE

SMALL = dict(hidden=(16,), latent=3)
CASES = {"truncate": 150, "flip-header": 250, "flip-data": 250, "mutate": 150}


def _sign(tensors: dict, meta: dict) -> None:
    """A forger's checksum: what ``save`` would write for these tensors and this metadata."""
    meta[files.INTEGRITY_KEY] = json.dumps(files.integrity(tensors, {k: v for k, v in meta.items()
                                                                      if k != files.INTEGRITY_KEY}))


def data(n=200, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mid_epoch(tmp_path_factory):
    """A real checkpoint written mid-epoch (so it holds generator states and running sums)."""
    folder = tmp_path_factory.mktemp("ckpt")

    def stop(record):  # before epoch 2 is saved: the checkpoint on disk is step 6's, 2 steps into epoch 2
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=2, batch_size=50, checkpoint_dir=folder,
                    checkpoint_every=6, val_data=data(40, 1), compile=False, callbacks=[stop])
    blob = (folder / CHECKPOINT_FILE).read_bytes()
    assert (funcvae.load(folder / CHECKPOINT_FILE).epoch, funcvae.load(folder / CHECKPOINT_FILE).step) == (1, 2)
    return blob


def snapshot(ckpt: funcvae.Checkpoint) -> dict:
    """Every value of a loaded checkpoint, tensors as (dtype, shape, bytes), for bit-for-bit comparison."""
    def raw(t):
        return None if t is None else (str(t.dtype), tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"params": {k: raw(v) for k, v in funcvae.leaves_by_path(ckpt.params).items()},
            "opt": {k: raw(v) for k, v in ckpt.train.opt_state.items()},
            "hyper": {k: raw(v) for k, v in ckpt.train.objective_state.items()}, "count": raw(ckpt.train.count), "rng": raw(ckpt.rng), "sums": raw(ckpt.sums), "epoch": ckpt.epoch,
            "step": ckpt.step, "model": ckpt.params.model,
            "json": records.dumps([ckpt.config, ckpt.history], sort_keys=True)}


def header_size(blob: bytes) -> int:
    return 8 + struct.unpack("<Q", blob[:8])[0]


def rewrite(blob: bytes, change, *, sign: bool) -> bytes:
    """The file with its training state replaced by ``change(state)``; with ``sign``, checksums made anew (a
    writer that is consistent but wrong), without, the old ones kept."""
    tensors = load_bytes(blob)
    meta = json.loads(blob[8:header_size(blob)])["__metadata__"]
    state = json.loads(meta[C._STATE_KEY])
    change(state)
    meta[C._STATE_KEY] = json.dumps(state)
    if sign:
        _sign(tensors, meta)
    return save_bytes(tensors, metadata=meta)


#: Where each field of the training state shows in a ``snapshot``.
SHOWN_AS = {"format": None, "model": "model", "epoch": "epoch", "step": "step", "config": "json", "history": "json"}


def mutation(rng: np.random.Generator):
    """One random change of one field of a training state, to a value of the wrong type or out of range, or
    its removal; and the field."""
    values = [-1, 2 ** 70, 1.5, "3", None, True, [], {}, [[]], [[{"epoch": 1}]], [{"epoch": 1}], "NaN", 0, 1]
    field = str(rng.choice(list(SHOWN_AS)))
    if rng.random() < 0.15:
        return f"del {field}", lambda s: s.pop(field), field
    value = values[rng.integers(len(values))]
    return f"{field}={value!r}", lambda s: s.__setitem__(field, value), field


def damaged(blob: bytes, kind: str, rng: np.random.Generator) -> tuple[str, bytes, str | None]:
    """A damaged copy of ``blob``, what was done, and the snapshot entry it may change if the file still loads
    (only a re-signed mutation, which a consistent writer could have made: damage must change nothing)."""
    if kind == "truncate":
        at = int(rng.integers(len(blob)))
        return f"truncated to {at}", blob[:at], None
    if kind == "mutate":
        what, change, field = mutation(rng)
        sign = bool(rng.integers(2))
        return (f"{what} ({'re-signed' if sign else 'stale checksums'})", rewrite(blob, change, sign=sign),
                SHOWN_AS[field] if sign else None)
    lo, hi = (0, header_size(blob)) if kind == "flip-header" else (header_size(blob), len(blob))
    at, bit = int(rng.integers(lo, hi)), int(rng.integers(8))
    out = bytearray(blob)
    out[at] ^= 1 << bit
    return f"bit {bit} of byte {at} flipped", bytes(out), None


@pytest.mark.parametrize("kind", CASES)
def test_a_damaged_checkpoint_loads_bit_identical_or_is_refused_naming_the_file(tmp_path, mid_epoch, kind):
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(mid_epoch)
    want = snapshot(funcvae.load(path))
    rng = np.random.default_rng(list(CASES).index(kind))
    outcomes = {"refused": 0, "identical": 0}
    for _ in range(CASES[kind]):
        what, blob, may_change = damaged(mid_epoch, kind, rng)
        path.write_bytes(blob)
        try:
            got = snapshot(funcvae.load(path))
        except ValueError as e:
            assert str(path) in str(e), (what, e)
            outcomes["refused"] += 1
            continue
        assert {k: v for k, v in got.items() if k != may_change} == {k: v for k, v in want.items() if k != may_change}, what
        key = "identical" if got == want else "loaded as written"
        outcomes[key] = outcomes.get(key, 0) + 1
    print(kind, outcomes)
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("kind", ["truncate", "flip-header", "flip-data"])
def test_a_damaged_params_file_loads_bit_identical_or_is_refused_naming_the_file(tmp_path, kind):
    path = tmp_path / "params.safetensors"
    funcvae.save_params(path, funcvae.init(seed=0, prior="vamp", pseudo_inputs=4, **SMALL))
    blob = path.read_bytes()
    want = {k: (t.dtype, t.shape, t.numpy().tobytes()) for k, t in funcvae.leaves_by_path(funcvae.load_params(path)).items()}
    rng = np.random.default_rng(10 + ["truncate", "flip-header", "flip-data"].index(kind))
    refused = 0
    for _ in range(CASES[kind] // 2):
        what, damaged_blob, _ = damaged(blob, kind, rng)
        path.write_bytes(damaged_blob)
        try:
            params = funcvae.load_params(path)
        except ValueError as e:
            assert str(path) in str(e), (what, e)
            refused += 1
            continue
        assert {k: (t.dtype, t.shape, t.numpy().tobytes()) for k, t in funcvae.leaves_by_path(params).items()} == want
    print(kind, "params file", {"refused": refused, "identical": CASES[kind] // 2 - refused})
    assert refused > 0


def test_every_single_bit_flip_of_the_tensor_data_is_refused(tmp_path, mid_epoch):
    # Systematically, one flip in every 97th byte: a checksum per tensor leaves no byte of data unguarded.
    path = tmp_path / CHECKPOINT_FILE
    start = header_size(mid_epoch)
    for at in range(start, len(mid_epoch), 97):
        blob = bytearray(mid_epoch)
        blob[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(blob))
        with pytest.raises(ValueError, match=r"is corrupt: tensor '.*' fails its checksum"):
            funcvae.load(path)


def test_a_damaged_params_file_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "params.safetensors"
    funcvae.save_params(path, funcvae.init(seed=0, **SMALL))
    blob = bytearray(path.read_bytes())
    tensors = load_bytes(bytes(blob))
    start = header_size(bytes(blob))
    blob[-3] ^= 0x40  # the last tensor's bytes (tensors are laid out in sorted order)
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=rf"{path} is corrupt: tensor '{sorted(tensors)[-1]}' fails its checksum"):
        funcvae.load_params(path)
    assert start < len(blob) - 3


def signed(blob: bytes, change) -> bytes:
    return rewrite(blob, change, sign=True)


@pytest.mark.parametrize("field, change, message", [
    ("epoch", lambda s: s.update(epoch=-1), r"'epoch' must be >= 0, got -1"),
    ("epoch", lambda s: s.update(epoch="1"), r"'epoch' must be a JSON int, got '1'"),
    ("epoch", lambda s: s.update(epoch=True), r"'epoch' must be a JSON int"),
    ("step", lambda s: s.update(step=1.5), r"'step' must be a JSON int, got 1.5"),
    ("step", lambda s: s.pop("step"), r"'step' is missing"),
    ("step", lambda s: s.update(step=0), r"'rng' must be absent at step 0"),
    ("config", lambda s: s.update(config=[1]), r"'config' must be a JSON dict"),
    ("history", lambda s: s.update(history={}), r"'history' must be a JSON list"),
    ("history", lambda s: s.update(history=[[]]), r"'history\[0\]' must list one record per epoch done \(1\)"),
    ("history", lambda s: s["history"][0][0].update(recon="a lot"), r"'history\[0\]\[0\]' must be epoch 1's record"),
    ("history", lambda s: s["history"][0][0].update(epoch=2), r"'history\[0\]\[0\]' must be epoch 1's record"),
    ("history", lambda s: s.update(history=s["history"] * 2), r"'history' must hold 1 list\(s\), one per model"),
    ("model", lambda s: s.update(model=[]), r"'model' must be a JSON dict"),
    ("model", lambda s: s["model"]["spec"].update(latent="3"), r"spec metadata does not describe a funcvae model"),
    ("model", lambda s: s["model"]["spec"].update(hidden=[8]), r"param \S+ has shape"),
    ("format", lambda s: s.update(format="funcvae-checkpoint-2"), r"checkpoint format 'funcvae-checkpoint-2'"),
])
def test_each_bad_field_is_a_value_error_naming_file_and_field(tmp_path, mid_epoch, field, change, message):
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(signed(mid_epoch, change))
    with pytest.raises(ValueError, match=message) as info:
        funcvae.load(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("name, replace, message", [
    ("count", lambda t: t.float(), r"'count' must be a tensor of torch.int64, got torch.float32"),
    ("count", lambda t: t.reshape(1), r"'count' must have shape \(\), got \(1,\)"),
    ("rng", lambda t: t.float(), r"'rng' must be a 2-d tensor of torch.uint8"),
    ("rng", lambda t: t.reshape(-1), r"'rng' must be a 2-d tensor of torch.uint8"),
    ("sums", lambda t: torch.cat([t, t]), r"'sums' must have 1 row\(s\), one per model, got 2"),
    ("hyper/beta", lambda t: t.float(), r"'hyper/beta' must be a tensor of torch.float64"),
])
def test_each_bad_tensor_field_is_a_value_error_naming_it(tmp_path, mid_epoch, name, replace, message):
    tensors = load_bytes(mid_epoch)
    meta = json.loads(mid_epoch[8:header_size(mid_epoch)])["__metadata__"]
    tensors[name] = replace(tensors[name]).contiguous()
    _sign(tensors, meta)
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(save_bytes(tensors, metadata=meta))
    with pytest.raises(ValueError, match=message):
        funcvae.load(path)


def test_a_checkpoint_of_another_generator_or_step_range_is_refused_at_resume(tmp_path, mid_epoch):
    # Fields in range for the file but not for the run that resumes it: named against the run.
    folder = tmp_path / "run"
    folder.mkdir()
    tensors = load_bytes(mid_epoch)
    meta = json.loads(mid_epoch[8:header_size(mid_epoch)])["__metadata__"]
    tensors["rng"] = tensors["rng"][:, :16].contiguous()  # a CUDA generator's state
    _sign(tensors, meta)
    (folder / CHECKPOINT_FILE).write_bytes(save_bytes(tensors, metadata=meta))
    with pytest.raises(ValueError, match=r"field 'rng' has shape \(1, 16\); this run's generators need \(1, 5056\)"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=2, batch_size=50, checkpoint_dir=folder,
                    checkpoint_every=6, val_data=data(40, 1), compile=False, resume=True)
    (folder / CHECKPOINT_FILE).write_bytes(signed(mid_epoch, lambda s: s.update(step=9)))
    with pytest.raises(ValueError, match=r"field 'step' is 9, not inside an epoch of 4 steps"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), data(), epochs=2, batch_size=50, checkpoint_dir=folder,
                    checkpoint_every=6, val_data=data(40, 1), compile=False, resume=True)


def changed_data(kind: str) -> torch.Tensor:
    x = data()
    images = x.view(-1, 28, 28)
    return {"flipped": images.flip(-1), "transposed": images.transpose(1, 2),
            "pixels-permuted": x[:, torch.randperm(784, generator=torch.Generator().manual_seed(0))],
            "rows-swapped": x[[1, 0, *range(2, x.shape[0])]],
            "one-value": x.index_put((torch.tensor([7]), torch.tensor([300])), torch.tensor(0.5)),
            "one-ulp": x.index_put((torch.tensor([7]), torch.tensor([300])), torch.nextafter(x[7, 300], torch.tensor(2.0)))
            }[kind].reshape(x.shape[0], 784)


@pytest.mark.parametrize("kind", ["flipped", "transposed", "pixels-permuted", "rows-swapped", "one-value", "one-ulp"])
def test_resume_refuses_data_whose_content_differs(tmp_path, kind):
    x = data()
    other = changed_data(kind)
    # Every change keeps what the old fingerprint saw (shape, row sums up to a reordering) or nearly so.
    assert other.shape == x.shape and not torch.equal(other, x)
    funcvae.fit(funcvae.init(seed=0, **SMALL), x, epochs=1, batch_size=50, checkpoint_dir=tmp_path, compile=False)
    with pytest.raises(ValueError, match=r"cannot resume from .*data: checkpoint \{.*'sha256'"):
        funcvae.fit(funcvae.init(seed=0, **SMALL), other, epochs=2, batch_size=50, checkpoint_dir=tmp_path,
                    compile=False, resume=True)


def test_resume_takes_the_same_data_in_another_container(tmp_path):
    # The digest is of the data as fit sees it: the same images as 8-bit numpy with scale=255 are the same.
    pixels = np.random.default_rng(0).integers(0, 256, (200, 1, 28, 28), dtype=np.uint8)
    as_float = (torch.from_numpy(pixels).double() / 255).float()
    funcvae.fit(funcvae.init(seed=0, **SMALL), as_float, epochs=1, batch_size=50, checkpoint_dir=tmp_path,
                compile=False)
    _, history = funcvae.fit(funcvae.init(seed=0, **SMALL), pixels, scale=255, epochs=2, batch_size=50,
                             checkpoint_dir=tmp_path, compile=False, resume=True)
    assert [r["epoch"] for r in history] == [1, 2]
