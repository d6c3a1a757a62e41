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
from funcvae._runtime import files

CHECKPOINT = importlib.import_module("funcvae.checkpoint")
SPECS = {
    "mlp-bernoulli": dict(hidden=(16,), latent=4),
    "mlp-deep-tanh": dict(hidden=(16, 8), latent=2, activation="tanh"),
    "conv": dict(arch="conv", hidden=(16,), latent=4, channels=(4, 8)),
    "conv-3-channel": dict(arch="conv", input_shape=(3, 8, 8), hidden=(8,), latent=2, channels=(2,)),
    "gaussian-learned-std": dict(likelihood="gaussian", hidden=(16,), latent=4),
    "gaussian-fixed-std": dict(likelihood="gaussian", obs_std=0.1, hidden=(16,), latent=4),
    "vamp-prior": dict(hidden=(16,), latent=4, prior="vamp", pseudo_inputs=5),
}


def perturbed(params, seed=0):
    """``params`` moved off their init values (so a learned obs_logvar is not all zeros)."""
    gen = torch.Generator().manual_seed(seed)
    return optree.tree_map(lambda t: t + 0.01 * torch.randn(t.shape, generator=gen, dtype=t.dtype), params,
                           namespace="funcvae")


def small(**fields):
    return perturbed(funcvae.init(seed=0, **{**SPECS["mlp-bernoulli"], **fields}))


def assert_same(a, b):
    assert a.model == b.model
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
    x = torch.rand(3, *params.model.input_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
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
    funcvae.save_params(tmp_path / "p.safetensors", funcvae.Params(params.model, tree))
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

    monkeypatch.setattr(files.os, "fsync", crash)
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
    return json.dumps(params.model.spec.to_dict())


def write_valid(path):
    funcvae.save_params(path, small())


def write_truncated(keep):
    def write(path):
        write_valid(path)
        blob = path.read_bytes()
        path.write_bytes(blob[:keep(len(blob))])
    return write


def write_tensors(change=None, *, metadata="spec", checksums=True):
    """A safetensors file of ``small()``'s leaves after ``change(leaves)``, with the given metadata and, unless
    ``checksums`` is False, a valid checksum record of them: a writer that is consistent but wrong."""
    def write(path):
        params = small()
        leaves = {k: v.contiguous() for k, v in funcvae.leaves_by_path(params).items()}
        if change is not None:
            change(leaves)
        meta = {"funcvae_model": json.dumps({"spec": json.loads(spec_json(params))})} if metadata == "spec" \
            else metadata
        if checksums and meta is not None:
            meta = {**meta, "funcvae_integrity": json.dumps(files.integrity(leaves, meta))}
        save_file(leaves, str(path), metadata=meta)
    return write


def spec_metadata(text):
    return {"funcvae_model": json.dumps({"spec": "PLACEHOLDER"}).replace('"PLACEHOLDER"', text)}


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
    ("no-metadata", lambda p: save_file({"a": torch.zeros(2)}, str(p)), r"has no funcvae model in its metadata"),
    ("leaves-without-metadata", write_tensors(metadata=None), r"has no funcvae model in its metadata"),
    ("foreign-metadata", write_tensors(metadata={"format": "pt"}), r"has no funcvae model in its metadata"),
    ("spec-not-json", write_tensors(metadata=spec_metadata("{arch: mlp")), r"metadata is not valid JSON"),
    ("spec-not-an-object", write_tensors(metadata=spec_metadata("[1, 2]")),
     r"spec metadata does not describe a funcvae model"),
    ("spec-unknown-field", write_tensors(metadata=spec_metadata(json.dumps({"arch": "mlp", "depth": 3}))),
     r"spec metadata does not describe a funcvae model .*depth"),
    ("spec-bad-value", write_tensors(metadata=spec_metadata(json.dumps({"arch": "transformer"}))),
     r"arch must be one of \('mlp', 'conv', 'ladder'\), got 'transformer'"),
    ("no-checksums", write_tensors(checksums=False), r"carries no checksums"),
    ("checksum-of-other-bytes", write_tensors(lambda t: t.update({"decoder/out/bias": t["decoder/out/bias"] + 1}),
                                              checksums=False), r"carries no checksums"),
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


def write_model_metadata(text):
    """A file of ``small()``'s leaves whose model metadata (the current format) is ``text``."""
    return write_tensors(metadata={"funcvae_model": text})


@pytest.mark.parametrize("write,message", [
    (write_model_metadata("{spec: 1"), r"metadata is not valid JSON"),
    (write_model_metadata("[1, 2]"), r"the model metadata is not a funcvae model description"),
    (write_model_metadata(json.dumps({"arch": "mlp"})), r"the model metadata is not a funcvae model description"),
    (write_model_metadata(json.dumps({"custom": {"encode": "mine.encode", "decode": "mine.decode"}})),
     r"holds a user's model \(encode=mine.encode, decode=mine.decode\); pass it: load_params\(path, model=model\)"),
], ids=["not-json", "not-an-object", "neither-spec-nor-custom", "custom-without-model"])
def test_bad_model_metadata_raises_value_error(tmp_path, write, message):
    path = tmp_path / "params.safetensors"
    write(path)
    with pytest.raises(ValueError, match=message):
        funcvae.load_params(path)


def test_a_built_in_model_passed_to_load_must_be_the_files(tmp_path):
    path = tmp_path / "params.safetensors"
    params = small()
    funcvae.save_params(path, params)
    assert_same(funcvae.load_params(path, model=params.model), params)
    with pytest.raises(ValueError, match=r"holds a .*'hidden': \[16\].* model, not Model\(ModelSpec\(.*hidden=\(12,\)"):
        funcvae.load_params(path, model=funcvae.models.mlp(hidden=(12,), latent=4))
    with pytest.raises(TypeError, match="model must be a funcvae.Model, got ModelSpec"):
        funcvae.load_params(path, model=params.model.spec)


def test_a_training_state_round_trips_with_and_without_its_template(tmp_path):
    from funcvae import objectives, optim

    params = small(prior="vamp", pseudo_inputs=3)
    objective, optimizer = objectives.elbo(0.5), optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-3))
    fresh = funcvae.init_state(params, objective, optimizer)
    gen = torch.Generator().manual_seed(1)
    opt_state = optree.tree_map(  # moments off zero, Adam's int64 step count off 0
        lambda t: t + (0.01 * torch.randn(t.shape, generator=gen, dtype=t.dtype) if t.is_floating_point() else 5),
        fresh.opt_state, namespace="funcvae")
    count = torch.tensor(7)
    path = tmp_path / "checkpoint.safetensors"
    train = funcvae.TrainState(params.tree, opt_state, fresh.objective_state, count)
    funcvae.save(path, funcvae.Checkpoint(params.model, train, epoch=1, step=0, config={"seed": 0},
                                          history=[[{"epoch": 1, "loss": 500.0}]]))
    flat = funcvae.load(path)
    assert_same(flat.params, params)
    assert (flat.epoch, flat.step, flat.config, flat.history) == (1, 0, {"seed": 0}, [[{"epoch": 1, "loss": 500.0}]])
    assert torch.equal(flat.train.count, count) and flat.train.objective_state.keys() == {"beta"}
    assert flat.train.objective_state["beta"].dtype == torch.float64
    assert float(flat.train.objective_state["beta"]) == 0.5
    want = dict(CHECKPOINT.paths_and_leaves(opt_state))
    assert isinstance(flat.train.opt_state, dict) and flat.train.opt_state.keys() == want.keys()
    assert "1/mu/prior/pseudo_inputs" in want and "0/hyper/max_norm" in want
    assert all(torch.equal(flat.train.opt_state[k], t) and flat.train.opt_state[k].dtype == t.dtype
               for k, t in want.items())
    rebuilt = funcvae.load(path, template=fresh.opt_state).train.opt_state
    assert type(rebuilt) is tuple and type(rebuilt[1]) is type(fresh.opt_state[1])
    assert optree.tree_structure(rebuilt, namespace="funcvae") == optree.tree_structure(opt_state, namespace="funcvae")
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(rebuilt, namespace="funcvae"),
                                                 optree.tree_leaves(opt_state, namespace="funcvae")))
    other = optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(1e-3, momentum=0.9))
    with pytest.raises(ValueError, match=r"optimiser state does not match this run's optimiser \(missing "
                                         r"\['1/hyper/momentum', '1/momentum/.*unexpected \['1/mu/"):
        funcvae.load(path, template=other.init(params.tree))


@pytest.mark.parametrize("change, field", [
    (dict(likelihood=funcvae.likelihoods.gaussian(0.1)), "likelihood"),
    (dict(prior=funcvae.priors.vamp(3)), "prior"),
])
def test_a_model_that_states_other_facts_than_the_file_is_refused(tmp_path, change, field):
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    funcvae.save_params(tmp_path / "p.safetensors", params)
    # Same encode, decode and (for the likelihood) the same leaves: only the stated facts differ.
    other = params.model.replace(**change)
    with pytest.raises(ValueError, match=f"differs from the one passed in {field}: file"):
        funcvae.load_params(tmp_path / "p.safetensors", model=other)
