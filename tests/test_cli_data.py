"""``train --data PATH``: a folder, .npy or .npz of one's own trains a model of its shape; config.json records the
data's path and SHA-256, so ``--resume`` refuses other data (naming both digests) and takes the same data from
anywhere; ``eval`` scores the recorded --val-data (else, said so, the training images) and ``sample`` works."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import funcvae
import funcvae.cli
from funcvae import images

TINY = ["--quiet", "--no-compile", "--hidden", "8", "--latent", "2", "--batch-size", "4", "--epochs", "1"]


def image_folder(root, n, seed=0, shape=(8, 8, 3)):
    """``n`` random PNGs in two class folders under ``root``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8).squeeze()).save(path)
    return root


def train(out, *args) -> int:
    return funcvae.cli.main(["train", "--out", str(out), *TINY, *map(str, args)])


def usage_error(capsys, *argv) -> str:
    """The one line of a usage error (exit 2) of the CLI run on ``argv``."""
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([*map(str, argv)])
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def run(tmp_path):
    """A run trained on a folder of 3x8x8 images, with a held-out folder."""
    train_dir, val_dir = image_folder(tmp_path / "train", 8), image_folder(tmp_path / "val", 4, seed=1)
    assert train(tmp_path / "runs", "--data", train_dir, "--val-data", val_dir) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir, train_dir, val_dir


def test_a_folder_run_records_its_data_and_resumes_only_on_them(run, tmp_path, capsys):
    run_dir, train_dir, val_dir = run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] is None and config["model"]["input_shape"] == [3, 8, 8]
    x = funcvae.data.folder(train_dir)
    assert config["data"]["train"] == {"path": str(train_dir.resolve()), "shape": [8, 3, 8, 8], "dtype": "uint8",
                                       "sha256": images.sha256(x)}
    assert config["data"]["val"]["sha256"] == images.sha256(funcvae.data.folder(val_dir))

    moved = shutil.copytree(train_dir, tmp_path / "moved")  # the same images elsewhere: taken, and recorded
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--data", str(moved), "--epochs", "2", "--quiet"]) == 0
    assert json.loads((run_dir / "config.json").read_text())["data"]["train"]["path"] == str(moved.resolve())

    message = usage_error(capsys, "train", "--resume", run_dir, "--val-data", train_dir, "--epochs", "3")
    assert f"{train_dir.resolve()} holds other data than the run's {val_dir.resolve()}" in message
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(moved / "a" / "0.png")  # other data at the recorded path
    message = usage_error(capsys, "train", "--resume", run_dir, "--epochs", "3")
    assert f"{moved.resolve()} holds other data than the run's" in message
    assert images.sha256(x) in message and images.sha256(funcvae.data.folder(moved)) in message

    assert funcvae.cli.main(["sample", str(run_dir), "--n", "4"]) == 0
    assert (run_dir / "samples-seed0.png").is_file()


def test_an_npz_run_conditional_without_held_out_data(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (8, 4, 4), dtype=np.uint8)  # (N, H, W): one channel
    np.savez(tmp_path / "digits.npz", x=x, y=np.arange(8) % 2)
    assert train(tmp_path / "runs", "--data", tmp_path / "digits.npz", "--context", "2") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["model"]["input_shape"] == [1, 4, 4]
    capsys.readouterr()
    assert funcvae.cli.main(["eval", str(run_dir), "--k", "2", "--quiet"]) == 0
    assert "no held-out data" in capsys.readouterr().out
    result = json.loads((run_dir / "eval.json").read_text())
    assert (result["split"], result["data"], result["n"]) == ("train", str((tmp_path / "digits.npz").resolve()), 8)


def test_npy_data_and_bad_data_are_usage_errors(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (8, 1, 4, 4), dtype=np.uint8))
    assert usage_error(capsys, "train", "--data", tmp_path / "x.npy", "--dataset", "mnist") == (
        f"python -m funcvae train: error: --data {tmp_path / 'x.npy'} and --dataset mnist both name the training "
        "images; give one")
    assert "--val-data is the held-out set of --data" in usage_error(capsys, "train", "--val-data", tmp_path / "x.npy")
    assert "--binarize static" in usage_error(capsys, "train", "--data", tmp_path / "x.npy", "--binarize", "static")
    assert f"--data: {tmp_path / 'missing'}: no such folder or file" in usage_error(
        capsys, "train", "--data", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "holds no image files" in usage_error(capsys, "train", "--data", tmp_path / "empty")
    np.save(tmp_path / "flat.npy", np.zeros((8, 16), np.uint8))
    assert "expected images (N, C, H, W) or (N, H, W)" in usage_error(capsys, "train", "--data", tmp_path / "flat.npy")
    assert train(tmp_path / "runs", "--data", tmp_path / "x.npy") == 0  # memory-mapped, trained on


def test_a_data_set_run_refuses_data_files_on_resume(tmp_path, capsys, monkeypatch):
    levels = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(funcvae.data, "load", lambda name, split, **_: levels.clone())
    assert train(tmp_path / "runs", "--dataset", "mnist") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    image_folder(tmp_path / "images", 4)
    assert "trained on the data set mnist, not on files" in usage_error(
        capsys, "train", "--resume", run_dir, "--data", tmp_path / "images", "--epochs", "2")
