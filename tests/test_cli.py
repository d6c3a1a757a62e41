"""``python -m funcvae train`` on a slice of real Fashion-MNIST: the printed table, the run folder, and that
what is printed and saved is what the library computes."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcvae
import funcvae.cli

HEADER = "Epoch | Reconstruction Loss | KL Divergence | Total ELBO Loss | Val Recon | Val KL | Val Total | s"
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")
REPO = Path(__file__).resolve().parents[1]
SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """512 train and 256 held-out real images, loaded once through a temporary cache."""
    if not SYSTEM.is_dir():
        pytest.skip("needs `apt-get install dataset-fashion-mnist`")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FUNCVAE_DATA", str(tmp_path_factory.mktemp("cli-cache")))
        return {"train": funcvae.data.load("fashion-mnist", "train")[:512].clone(),
                "test": funcvae.data.load("fashion-mnist", "test")[:256].clone()}


@pytest.fixture
def loads(subset, monkeypatch):
    """funcvae.data.load serves the subset (binarised like the real one when asked); returns the calls made."""
    calls = []

    def load(name, split, root=None, binarize=None, seed=0):
        calls.append(dict(name=name, split=split, root=root, binarize=binarize, seed=seed))
        x = subset[split].clone()
        return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed)) if binarize == "static" else x

    monkeypatch.setattr(funcvae.data, "load", load)
    return calls


def train(out, *args):
    return funcvae.cli.main(["train", "--out", str(out), "--quiet", "--no-compile", *args])


CASES = {
    "mlp-bernoulli-2-epochs": (["--epochs", "2", "--hidden", "64", "--latent", "8"],
                               dict(arch="mlp", hidden=(64,), latent=8, likelihood="bernoulli", obs_std=None),
                               dict(epochs=2, batch_size=128, lr=1e-3, seed=0, beta=1.0, kl_warmup=0.0, binarize=None)),
    "gaussian-fixed-std": (["--epochs", "1", "--hidden", "32", "16", "--latent", "4", "--likelihood", "gaussian",
                            "--obs-std", "0.2", "--lr", "3e-3", "--beta", "0.5", "--seed", "3", "--activation", "tanh"],
                           dict(hidden=(32, 16), latent=4, likelihood="gaussian", obs_std=0.2, activation="tanh"),
                           dict(epochs=1, lr=3e-3, beta=0.5, seed=3)),
    "static-binarised-warm-up": (["--epochs", "1", "--hidden", "32", "--binarize", "static", "--kl-warmup", "2",
                                  "--batch-size", "100"],
                                 dict(hidden=(32,), latent=20), dict(batch_size=100, kl_warmup=2.0, binarize=None)),
    "dynamic-binarised": (["--epochs", "1", "--hidden", "32", "--binarize", "dynamic", "--seed", "1"],
                          dict(hidden=(32,)), dict(seed=1, binarize="dynamic")),
    "bfloat16-products": (["--epochs", "1", "--hidden", "32", "--bf16"], dict(hidden=(32,)),
                          dict(matmul_dtype="bfloat16")),
}


@pytest.mark.parametrize("args,model,settings", CASES.values(), ids=CASES.keys())
def test_train_prints_the_table_and_saves_the_run(tmp_path, capsys, loads, args, model, settings):
    assert train(tmp_path, *args) == 0
    lines = capsys.readouterr().out.splitlines()

    # The run folder: the one printed, holding exactly the three files.
    (run_dir,) = list(tmp_path.iterdir())
    assert lines[0] == f"run folder: {run_dir}"
    assert re.fullmatch(r"\d{8}-\d{6}-fashion-mnist-(mlp|conv)-seed\d+", run_dir.name)
    assert sorted(os.listdir(run_dir)) == ["checkpoint.safetensors", "config.json", "history.jsonl", "params.safetensors"]

    # config.json: the model spec and the fit settings.
    config = json.loads((run_dir / "config.json").read_text())
    params = funcvae.load_params(run_dir / "params.safetensors")
    assert funcvae.ModelSpec.from_dict(config["model"]) == params.spec
    assert all(getattr(params.spec, k) == v for k, v in model.items())
    assert set(config["fit"]) == {"epochs", "batch_size", "lr", "seed", "beta", "kl_warmup", "binarize", "compile",
                                  "checkpoint_every", "on_nonfinite", "matmul_dtype"}
    assert config["fit"]["matmul_dtype"] == ("bfloat16" if "--bf16" in args else None)
    assert config["fit"]["compile"] is False  # --no-compile
    assert all(config["fit"][k] == v for k, v in settings.items())
    assert (config["dataset"], config["n_train"], config["n_test"]) == ("fashion-mnist", 512, 256)
    static = "static" if "static" in args else None
    assert config["binarize"] == (args[args.index("--binarize") + 1] if "--binarize" in args else None)
    assert loads == [dict(name="fashion-mnist", split=s, root=None, binarize=static, seed=config["fit"]["seed"])
                     for s in ("train", "test")]

    # history.jsonl: one JSON object per epoch.
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    epochs = config["fit"]["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    for record in history:
        assert set(KEYS) <= set(record)
        assert all(isinstance(record[k], float) and math.isfinite(record[k]) for k in KEYS[1:])
        assert record["loss"] == pytest.approx(record["recon"] + config["fit"]["beta"] * record["kl"])

    # The table: the header, then one row per epoch whose cells are history's numbers as printed.
    assert lines.count(HEADER) == 1
    start = lines.index(HEADER) + 1
    rows = lines[start:start + epochs]
    assert lines[start + epochs].startswith("saved ")
    columns = HEADER.split(" | ")
    for row, record in zip(rows, history, strict=True):
        cells = row.split(" | ")
        assert len(cells) == len(columns)
        assert all(len(cell) == len(column) for cell, column in zip(cells[:-1], columns[:-1]))  # aligned
        assert cells[0].strip() == str(record["epoch"])
        for cell, key in zip(cells[1:], KEYS[1:]):
            assert cell.strip() == f"{record[key]:.{1 if key == 'seconds' else 2}f}", key
            float(cell)

    # Reproducible from config.json alone: the same fit gives the same params and history.
    fit = config["fit"]
    data = {s: funcvae.data.load(config["dataset"], s, binarize=static, seed=fit["seed"]) for s in ("train", "test")}
    want, want_history = funcvae.fit(funcvae.init(seed=fit["seed"], **config["model"]), data["train"],
                                     val_data=data["test"], progress=False, **fit)
    got, want = funcvae.leaves_by_path(params), funcvae.leaves_by_path(want)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in want_history]


@pytest.mark.parametrize("args,complaint", [
    ([], "the following arguments are required: COMMAND"),
    (["fit"], "invalid choice: 'fit'"),
    (["train", "--arch", "transformer"], "argument --arch: invalid choice: 'transformer'"),
    (["train", "--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
    (["train", "--binarize", "yes"], "argument --binarize: invalid choice: 'yes'"),
    (["train", "--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
    (["train", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["train", "--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
])
def test_bad_arguments_exit_2_before_loading_data(tmp_path, capsys, loads, args, complaint):
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([*args, "--out", str(tmp_path)] if args[:1] == ["train"] else args)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err
    assert loads == [] and list(tmp_path.iterdir()) == []


def test_train_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--dataset", "--data-root", "--binarize", "--arch", "--hidden", "--latent", "--likelihood",
                   "--obs-std", "--epochs", "--batch-size", "--lr", "--beta", "--kl-warmup", "--seed", "--out",
                   "--quiet"):
        assert option in out


def test_python_m_funcvae_help_exits_0():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "funcvae", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m funcvae")
    assert "train" in result.stdout


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--lr", "0"], ["--batch-size", "1000"], ["--beta", "-1"]])
def test_rejected_settings_leave_no_run_folder(tmp_path, loads, args):
    with pytest.raises((ValueError, SystemExit)):
        train(tmp_path, "--hidden", "8", *args)
    assert list(tmp_path.iterdir()) == []


def test_two_runs_in_the_same_second_both_save(tmp_path, loads, monkeypatch):
    monkeypatch.setattr(funcvae.cli.time, "strftime", lambda fmt, *args: "20250101-120000")
    for lr in ("1e-3", "3e-3"):
        assert train(tmp_path, "--epochs", "1", "--hidden", "8", "--latent", "2", "--batch-size", "256",
                     "--lr", lr) == 0
    assert len(list(tmp_path.iterdir())) == 2
