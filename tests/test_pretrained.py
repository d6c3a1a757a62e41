"""The pretrained model that ships with the package: its file is the one recorded, it is the default model, it
scores on real test images as measured and far above an untrained model, a damaged copy or an unknown name is
refused, and ``eval --pretrained`` scores it with the library's numbers."""

import contextlib
import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import funcvae
import funcvae.cli
from funcvae import models
from funcvae.sweep import mean_se

#: -ELBO (nats per example) of the shipped model on the first 500 Fashion-MNIST test images at seed 0, as
#: ``python3 scripts/train_pretrained.py`` measured it ("ELBO, first 500"; docs/evaluation.md).
MEASURED_LOSS = 240.407
#: Standard errors (over the images, 3.39 nats) within which the test's -ELBO lies of ``MEASURED_LOSS`` (the same
#: images and noise: only a CPU's rounding differs); and standard errors of the paired difference by which an
#: untrained model's lies above the shipped one's (measured: 308.4 ± 3.4 nats, 91 of them).
WITHIN, ABOVE = 4, 20


@pytest.fixture(scope="module")
def shipped():
    return models.pretrained("fashion-mnist")


def test_the_shipped_file_is_the_recorded_one():
    path, sha256 = models.PRETRAINED["fashion-mnist"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def test_it_is_the_default_model_in_float32_rounded_to_the_stored_dtype(shipped):
    fresh = funcvae.init(seed=0)
    assert shipped.model is fresh.model
    mine, default = funcvae.leaves_by_path(shipped), funcvae.leaves_by_path(fresh)
    assert list(mine) == list(default)  # the same paths in the same order: torch.func flattens by it
    for path, t in mine.items():
        assert t.shape == default[path].shape and t.dtype == torch.float32, path
        assert torch.equal(t, t.to(models.STORED_DTYPE).float()), path


def test_each_call_gives_new_tensors(shipped):
    again = models.pretrained("fashion-mnist")
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(funcvae.leaves_by_path(shipped).values(),
                                                            funcvae.leaves_by_path(again).values()))


def test_its_test_elbo_is_the_measured_one_and_far_above_an_untrained_models(shipped, fashion):
    x = fashion[1][:500]
    loss = funcvae.elbo(shipped, x, seed=0)["loss"]
    mean, se = mean_se(loss)
    assert abs(mean - MEASURED_LOSS) < WITHIN * se, (mean, se)
    gap, gap_se = mean_se(funcvae.elbo(funcvae.init(seed=0), x, seed=0)["loss"] - loss)
    assert gap > ABOVE * gap_se, (gap, gap_se)


def test_a_damaged_copy_is_refused_naming_it(tmp_path, monkeypatch):
    path, sha256 = models.PRETRAINED["fashion-mnist"]
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    raw = bytearray(copy.read_bytes())
    raw[-1] ^= 1  # one bit of the last tensor's last number
    copy.write_bytes(bytes(raw))
    monkeypatch.setitem(models.PRETRAINED, "fashion-mnist", (copy, sha256))
    with pytest.raises(ValueError, match=re.escape(str(copy)) + " fails its SHA-256"):
        models.pretrained("fashion-mnist")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"no pretrained model 'mnist'; the package ships \['fashion-mnist'\]"):
        models.pretrained("mnist")


def test_save_and_load_round_trip_through_the_stored_dtype_without_times(tmp_path):
    params = funcvae.init(seed=1, hidden=(8,), latent=2)
    history = [{"epoch": 1, "loss": 3.5, "val_loss": math.nan, "seconds": 2.5}]  # a time would change the bytes
    sha = models.save_pretrained(tmp_path / "p.safetensors", params, history)
    loaded, again = models.load_pretrained(tmp_path / "p.safetensors", sha)
    assert loaded.model is params.model
    assert math.isnan(again[0].pop("val_loss")) and again == [{"epoch": 1, "loss": 3.5}]
    for path, t in funcvae.leaves_by_path(params).items():
        assert torch.equal(funcvae.leaves_by_path(loaded)[path], t.to(models.STORED_DTYPE).float()), path


def test_what_the_stored_dtype_cannot_hold_or_rebuild_is_refused(tmp_path):
    params = funcvae.init(seed=1, hidden=(8,), latent=2)
    big = funcvae.Params(params.model, {**params.tree, "decoder": {**params.tree["decoder"], "out": {
        "kernel": params.tree["decoder"]["out"]["kernel"] * 1e6, "bias": params.tree["decoder"]["out"]["bias"]}}})
    with pytest.raises(ValueError, match="param decoder/out/kernel has values that torch.float16 cannot hold"):
        models.save_pretrained(tmp_path / "p.safetensors", big, [])
    own = funcvae.Model(init=params.model.init_fn, encode=params.model.encode, decode=params.model.decode,
                        likelihood="bernoulli", input_shape=(1, 28, 28), latent=2)
    with pytest.raises(ValueError, match="only a built-in model's params"):
        models.save_pretrained(tmp_path / "p.safetensors", funcvae.Params(own, params.tree), [])
    assert not (tmp_path / "p.safetensors").exists()


def test_a_file_of_another_writer_is_refused_naming_it(tmp_path):
    path = tmp_path / "params.safetensors"
    funcvae.save_params(path, funcvae.init(seed=1, hidden=(8,), latent=2))
    with pytest.raises(ValueError, match=re.escape(str(path)) + " was not written by funcvae.models.save_pretrained"):
        models.load_pretrained(path, hashlib.sha256(path.read_bytes()).hexdigest())


def cli(*args):
    """Run the CLI; returns (exit code, printed lines)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = funcvae.cli.main([str(a) for a in args])
    return code, out.getvalue().splitlines()


def test_eval_pretrained_scores_it_with_the_librarys_numbers(shipped, fashion, tmp_path, monkeypatch):
    subset = {"train": fashion[0][:256], "test": fashion[1][:64]}  # a slice of the data: seconds, not minutes
    monkeypatch.setattr(funcvae.data, "load", lambda name, split, **_: subset[split].clone())
    monkeypatch.chdir(tmp_path)
    code, lines = cli("eval", "--pretrained", "fashion-mnist", "--k", 2, "--n", 20, "--quiet")
    assert code == 0, lines
    out = tmp_path / "runs" / "pretrained-fashion-mnist"
    result = json.loads((out / "eval.json").read_text())
    assert (result["dataset"], result["n"], result["iwae_k"]) == ("fashion-mnist", 20, 2)
    x = subset["test"][:20].reshape(20, -1)
    assert result["loss"] == pytest.approx(mean_se(funcvae.elbo(shipped, x, seed=0)["loss"])[0], rel=1e-6)
    assert all(Path(file).is_file() for file in result["files"].values() if file is not None)
    assert result["files"]["loss_curves"] is not None  # the training history ships with the params


@pytest.mark.parametrize("args, messages", [
    ((), ["give a run folder RUN or --pretrained NAME"]),
    (("somewhere", "--pretrained", "fashion-mnist"), ["give a run folder RUN or --pretrained NAME, not both"]),
    (("--pretrained", "mnist"), ["invalid choice: 'mnist'", "fashion-mnist"]),
    (("somewhere", "--out", "there"), ["--out is for --pretrained"]),
])
def test_eval_takes_one_of_run_and_pretrained(args, messages, capsys):
    with pytest.raises(SystemExit) as e:
        funcvae.cli.main(["eval", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and all(m in err for m in messages), err
