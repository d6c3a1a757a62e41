"""save_params / load_params: exact round trips for every architecture and likelihood, atomic writes, and a
clear error for every kind of bad file."""

import importlib
import json
import os

import numpy as np
import optree
import pytest
import torch
from safetensors.torch import save_file

import funcvae

CHECKPOINT = importlib.import_module("funcvae.checkpoint")
SPECS = {
    "mlp-bernoulli": dict(hidden=(16,), latent=4),
    "mlp-deep-tanh": dict(hidden=(16, 8), latent=2, activation="tanh"),
    "conv": dict(arch="conv", hidden=(16,), latent=4, channels=(4, 8)),
    "conv-3-channel": dict(arch="conv", input_shape=(3, 8, 8), hidden=(8,), latent=2, channels=(2,)),
    "gaussian-learned-std": dict(likelihood="gaussian", hidden=(16,), latent=4),
    "gaussian-fixed-std": dict(likelihood="gaussian", obs_std=0.1, hidden=(16,), latent=4),
}


def perturbed(params, seed=0):
    """``params`` moved off their init values (so a learned obs_logvar is not all zeros)."""
    gen = torch.Generator().manual_seed(seed)
    return optree.tree_map(lambda t: t + 0.01 * torch.randn(t.shape, generator=gen, dtype=t.dtype), params,
                           namespace="funcvae")


def small(**fields):
    return perturbed(funcvae.init(seed=0, **{**SPECS["mlp-bernoulli"], **fields}))


def assert_same(a, b):
    assert a.spec == b.spec
    la, lb = funcvae.leaves_by_path(a), funcvae.leaves_by_path(b)
    assert la.keys() == lb.keys()
    for path in la:
        assert la[path].dtype == lb[path].dtype, path
        assert torch.equal(la[path], lb[path]), path


@pytest.mark.parametrize("fields", SPECS.values(), ids=SPECS.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_round_trip_is_exact(tmp_path, fields, dtype):
    params = perturbed(funcvae.init(seed=0, dtype=dtype, **fields))
    path = tmp_path / "params.safetensors"
    funcvae.save_params(path, params)
    loaded = funcvae.load_params(str(path))
    assert_same(loaded, params)
    assert ("decoder/obs_logvar" in funcvae.leaves_by_path(loaded)) == (
        fields.get("likelihood") == "gaussian" and fields.get("obs_std") is None)
    x = torch.rand(3, *params.spec.input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    want, got = funcvae.elbo(params, x, seed=1), funcvae.elbo(loaded, x, seed=1)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert os.listdir(tmp_path) == ["params.safetensors"]  # no temporary file left behind


def test_round_trip_of_non_contiguous_leaves(tmp_path):
    params = small()
    tree = optree.tree_map(lambda t: t, params.tree)
    kernel = tree["encoder"]["mean"]["kernel"]
    strided = torch.empty(kernel.shape[::-1]).t()
    strided.copy_(kernel)
    assert not strided.is_contiguous()
    tree["encoder"]["mean"]["kernel"] = strided
    funcvae.save_params(tmp_path / "p.safetensors", funcvae.Params(params.spec, tree))
    assert_same(funcvae.load_params(tmp_path / "p.safetensors"), params)


def test_saving_over_a_file_replaces_it(tmp_path):
    path = tmp_path / "params.safetensors"
    first, second = small(), perturbed(funcvae.init(seed=1, hidden=(32,), latent=2), seed=1)
    funcvae.save_params(path, first)
    funcvae.save_params(path, second)
    assert_same(funcvae.load_params(path), second)
    assert os.listdir(tmp_path) == ["params.safetensors"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "params.safetensors"
    old = small()
    funcvae.save_params(path, old)

    def crash(fd):  # the temporary file holds the new bytes, not yet synced, when the disk fails
        raise OSError("disk full (test)")

    monkeypatch.setattr(CHECKPOINT.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        funcvae.save_params(path, small(latent=2))
    assert os.listdir(tmp_path) == ["params.safetensors"]
    assert_same(funcvae.load_params(path), old)


@pytest.mark.parametrize("bad,error,message", [
    ({"tree": True}, TypeError, r"expected funcvae Params"),
    ({"nan": True}, ValueError, r"param encoder/mean/kernel holds NaN or Inf"),
])
def test_bad_params_are_not_saved(tmp_path, bad, error, message):
    params = small()
    if "tree" in bad:
        params = params.tree
    else:
        params.tree["encoder"]["mean"]["kernel"][0, 0] = float("nan")
    with pytest.raises(error, match=message):
        funcvae.save_params(tmp_path / "params.safetensors", params)
    assert os.listdir(tmp_path) == []


def test_saving_into_a_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        funcvae.save_params(tmp_path / "no-such-folder" / "params.safetensors", small())
    assert os.listdir(tmp_path) == []


def spec_json(params) -> str:
    return json.dumps(params.spec.to_dict())


def write_valid(path):
    funcvae.save_params(path, small())


def write_truncated(keep):
    def write(path):
        write_valid(path)
        blob = path.read_bytes()
        path.write_bytes(blob[:keep(len(blob))])
    return write


def write_tensors(change=None, *, metadata="spec"):
    """A safetensors file of ``small()``'s leaves after ``change(leaves)``, with the given metadata."""
    def write(path):
        params = small()
        leaves = {k: v.contiguous() for k, v in funcvae.leaves_by_path(params).items()}
        if change is not None:
            change(leaves)
        meta = {"funcvae_spec": spec_json(params)} if metadata == "spec" else metadata
        save_file(leaves, str(path), metadata=meta)
    return write


def other_spec(leaves):
    leaves.clear()
    leaves.update({k: v.contiguous() for k, v in funcvae.leaves_by_path(small(hidden=(12,))).items()})


BAD_FILES = [
    ("truncated-half", write_truncated(lambda n: n // 2), r"is not a readable safetensors file"),
    ("truncated-to-header-length", write_truncated(lambda n: 8), r"is not a readable safetensors file"),
    ("truncated-to-4-bytes", write_truncated(lambda n: 4), r"is not a readable safetensors file"),
    ("truncated-last-byte", write_truncated(lambda n: n - 1), r"is not a readable safetensors file"),
    ("empty", lambda p: p.write_bytes(b""), r"is not a readable safetensors file"),
    ("random-bytes", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
     r"is not a readable safetensors file"),
    ("text", lambda p: p.write_text("epoch,loss\n1,500.0\n" * 20), r"is not a readable safetensors file"),
    ("pickle", lambda p: torch.save(small().tree, p), r"is not a readable safetensors file"),
    ("no-metadata", lambda p: save_file({"a": torch.zeros(2)}, str(p)), r"has no funcvae spec in its metadata"),
    ("leaves-without-metadata", write_tensors(metadata=None), r"has no funcvae spec in its metadata"),
    ("foreign-metadata", write_tensors(metadata={"format": "pt"}), r"has no funcvae spec in its metadata"),
    ("spec-not-json", write_tensors(metadata={"funcvae_spec": "{arch: mlp"}), r"metadata is not valid JSON"),
    ("spec-not-an-object", write_tensors(metadata={"funcvae_spec": "[1, 2]"}),
     r"spec metadata does not describe a funcvae model"),
    ("spec-unknown-field", write_tensors(metadata={"funcvae_spec": json.dumps({"arch": "mlp", "depth": 3})}),
     r"spec metadata does not describe a funcvae model .*depth"),
    ("spec-bad-value", write_tensors(metadata={"funcvae_spec": json.dumps({"arch": "transformer"})}),
     r"arch must be one of \('mlp', 'conv'\), got 'transformer'"),
    ("tensors-of-another-spec", write_tensors(other_spec), r"param \S+ has shape \(12,?.*\), expected \(16,?.*\)"),
    ("missing-tensor", write_tensors(lambda t: t.pop("encoder/mean/kernel")),
     r"missing \['encoder/mean/kernel'\], unexpected \[\]"),
    ("extra-tensor", write_tensors(lambda t: t.update({"encoder/mean/scale": torch.ones(4)})),
     r"missing \[\], unexpected \['encoder/mean/scale'\]"),
    ("renamed-tensor", write_tensors(lambda t: t.update({"encoder/mu/kernel": t.pop("encoder/mean/kernel")})),
     r"missing \['encoder/mean/kernel'\], unexpected \['encoder/mu/kernel'\]"),
    ("wrong-shape", write_tensors(lambda t: t.update({"decoder/out/bias": torch.zeros(783)})),
     r"param decoder/out/bias has shape \(783,\), expected \(784,\)"),
    ("nan-tensor", write_tensors(lambda t: t["decoder/out/bias"].fill_(float("nan"))),
     r"param decoder/out/bias holds NaN or Inf"),
]


@pytest.mark.parametrize("write,message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_file_raises_value_error(tmp_path, write, message):
    path = tmp_path / "params.safetensors"
    write(path)
    with pytest.raises(ValueError, match=message):
        funcvae.load_params(path)


@pytest.mark.parametrize("name", ["truncated-half", "random-bytes", "no-metadata", "spec-not-json"])
def test_unreadable_file_error_names_the_file(tmp_path, name):
    write = dict((case[0], case[1]) for case in BAD_FILES)[name]
    path = tmp_path / "params.safetensors"
    write(path)
    with pytest.raises(ValueError) as info:
        funcvae.load_params(path)
    assert str(path) in str(info.value)


def test_integer_tensor_in_file_raises_value_error(tmp_path):
    path = tmp_path / "params.safetensors"
    write_tensors(lambda t: t.update({"decoder/out/bias": torch.zeros(784, dtype=torch.int32)}))(path)
    with pytest.raises(ValueError, match=r"decoder/out/bias"):
        funcvae.load_params(path)


def test_key_that_is_both_leaf_and_folder_raises_value_error(tmp_path):
    path = tmp_path / "params.safetensors"
    write_tensors(lambda t: t.update({"encoder": torch.zeros(1)}))(path)
    with pytest.raises(ValueError, match=r"encoder"):
        funcvae.load_params(path)


@pytest.mark.parametrize("where", ["missing-file", "missing-folder", "a-folder"])
def test_missing_path_raises_file_not_found(tmp_path, where):
    path = {"missing-file": tmp_path / "params.safetensors", "missing-folder": tmp_path / "run" / "params.safetensors",
            "a-folder": tmp_path}[where]
    with pytest.raises(FileNotFoundError, match=r"no file at"):
        funcvae.load_params(path)
