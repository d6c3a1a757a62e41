"""The command line with every family: the built-in ladder, IAF and conditional models from their options, a
hierarchical model of one's own from its file; ``eval`` shows the KL of each latent group and a conditional
run's conditional accuracy; ``sample --context`` draws one label."""

import json
from pathlib import Path

import pytest
import torch

import funcvae
from test_cli_eval import cli, fake_load

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subset(fashion):
    return {"train": fashion[0][:256].clone(), "test": fashion[1][:128].clone()}


@pytest.fixture(scope="module")
def labelled(subset):
    """data.labels serving the subset's labels (the first images' of the real splits)."""
    real = {split: funcvae.data.labels("fashion-mnist", split)[:subset[split].shape[0]] for split in subset}
    return lambda name, split, root=None: real[split].clone()


def train_and_eval(tmp, subset, labelled, *options):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(funcvae.data, "load", fake_load(subset, []))
        mp.setattr(funcvae.data, "labels", labelled)
        code, lines = cli("train", "--out", tmp, "--quiet", "--no-compile", "--epochs", "1", "--batch-size", "64",
                          *options)
        assert code == 0, lines
        (run_dir,) = tmp.iterdir()
        code, out = cli("eval", run_dir, "--k", "20", "--n", "40", "--seed", "1")
        assert code == 0
    return run_dir, lines, out, json.loads((run_dir / "eval.json").read_text())


def test_a_ladder_run_shows_the_kl_of_each_group(tmp_path, subset, labelled):
    run_dir, lines, out, result = train_and_eval(tmp_path, subset, labelled, "--arch", "ladder", "--hidden", "32", "16",
                                                 "--latents", "4", "2", "--free-bits", "0.2")
    assert any("KL by group z1" in line and "z2" in line for line in lines)  # train's table
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == "ladder" and config["model"]["latents"] == [4, 2]
    assert list(result["kl_groups"]) == ["z1", "z2"] and list(result["active_by_group"]) == ["z1", "z2"]
    assert sum(result["kl_groups"].values()) == pytest.approx(result["kl"], rel=1e-4)
    assert any(line.startswith("KL per latent group: z1") for line in out)
    assert result["files"]["traversal"] is None and result["files"]["samples"] is not None


def test_an_iaf_run_evaluates_without_a_closed_form(tmp_path, subset, labelled):
    _, _, out, result = train_and_eval(tmp_path, subset, labelled, "--posterior", "iaf", "--hidden", "32",
                                       "--latent", "4")
    assert result["kl_per_dim"] is None and result["mutual_information"] is None
    assert any("mutual information I(x;z)" in line and "<=" in line for line in out)


def test_a_conditional_run_is_scored_given_its_labels_and_samples_one_label(tmp_path, subset, labelled):
    run_dir, _, out, result = train_and_eval(tmp_path, subset, labelled, "--context", "10", "--hidden", "32",
                                             "--latent", "4")
    cond = result["conditional"]
    assert 0 <= cond["accuracy"] <= 1 and len(cond["fid_per_class"]) == 10
    assert any(line.startswith("conditional samples:") for line in out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(funcvae.data, "labels", labelled)
        assert cli("sample", run_dir, "--n", "8", "--context", "3")[0] == 0
        assert json.loads((run_dir / "samples.json").read_text())["context"] == 3
        with pytest.raises(SystemExit):
            cli("sample", run_dir, "--context", "10")


def test_a_hierarchical_model_of_ones_own_trains_from_its_file(tmp_path, subset, labelled):
    _, _, out, result = train_and_eval(tmp_path, subset, labelled, "--model",
                                       f"{REPO / 'examples' / 'two_layer.py'}:model")
    assert list(result["kl_groups"]) == ["z1", "z2"]


def test_sample_context_for_an_unconditional_run_is_a_usage_error(tmp_path, subset, labelled):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(funcvae.data, "load", fake_load(subset, []))
        assert cli("train", "--out", tmp_path, "--quiet", "--no-compile", "--epochs", "1", "--hidden", "16",
                   "--latent", "2")[0] == 0
    (run_dir,) = tmp_path.iterdir()
    with pytest.raises(SystemExit) as info:
        cli("sample", run_dir, "--context", "1")
    assert info.value.code == 2
    assert torch.is_tensor(funcvae.load_params(run_dir / "params.safetensors").tree["encoder"]["mean"]["kernel"])
