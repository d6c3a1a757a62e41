"""``eval`` on data with known factors: a shapes run reports every disentanglement score on the set's own factor
grid, a ``--data`` run those of ``--factors FILE`` (a .npy or a .npz); each latent dim of the traversal is
labelled by its most informative factor; bad factor files are refused before any scoring."""

import json

import numpy as np
import pytest

import funcvae
import funcvae.cli
from funcvae import disentanglement
from funcvae.cli import factors

TINY = ["--quiet", "--no-compile", "--hidden", "8", "--latent", "3", "--batch-size", "512", "--epochs", "1"]
SCORES = ("mig", "sap", "dci", "factor_vae", "beta_vae")


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """A run trained on 600 shapes images given as a .npy (--data), with 400 more held out (--val-data), and the
    held-out images' factors: {"run": folder, "factors": (400, 5) int64, "dir": tmp folder}."""
    root = tmp_path_factory.mktemp("factors")
    images, y = funcvae.data.shapes("test", size=32, grid="small")
    rows = np.random.default_rng(0).permutation(len(images))[:1000]
    np.save(root / "train.npy", images[rows[:600]].numpy())
    np.save(root / "val.npy", images[rows[600:]].numpy())
    assert funcvae.cli.main(["train", "--out", str(root / "runs"), *TINY, "--data", str(root / "train.npy"),
                             "--val-data", str(root / "val.npy")]) == 0
    (run_dir,) = (root / "runs").iterdir()
    return {"run": run_dir, "factors": y[rows[600:]].numpy(), "dir": root}


def eval_run(run_dir, *args) -> int:
    return funcvae.cli.main(["eval", str(run_dir), "--k", "2", "--n", "20", "--quiet", *map(str, args)])


def test_a_data_run_reports_the_scores_of_its_factors_file(data_run, capsys):
    y = data_run["factors"]
    path = data_run["dir"] / "factors.npz"
    np.savez(path, **dict(zip(funcvae.sprites.FACTOR_NAMES, y.T)))
    assert eval_run(data_run["run"], "--factors", path) == 0
    out = capsys.readouterr().out
    result = json.loads((data_run["run"] / "eval.json").read_text())["disentanglement"]
    assert set(SCORES) <= set(result) and result["factors"] == list(funcvae.sprites.FACTOR_NAMES)
    assert result["n"] == result["sizes"]["n"] == len(y)  # QUICK's n, cut to the 400 held-out images
    assert result["kind"] == "mean" and len(result["dims"]) == 3
    assert set(result["dims"]) <= {*funcvae.sprites.FACTOR_NAMES, factors.NO_FACTOR}
    for label, value in (("MIG", result["mig"]["mig"]), ("DCI disentanglement", result["dci"]["disentanglement"]),
                         ("FactorVAE score", result["factor_vae"]["score"])):
        assert f"{label.ljust(19)} | {value:.3f}" in out
        assert 0 <= value <= 1
    assert "each latent dim's most informative factor: " + " ".join(
        f"{d}:{name}" for d, name in enumerate(result["dims"])) in out
    # The dims' labels are the most informative factors of MIG's own matrix, above the plug-in bias.
    info = np.asarray(result["mig"]["mutual_information"])
    bias = 19 * (max(len(np.unique(c)) for c in y.T) - 1) / (2 * len(y))
    expected = disentanglement.most_informative(info, minimum=bias)
    assert result["dims"] == [factors.NO_FACTOR if k < 0 else result["factors"][k] for k in expected]
    # The same scores from a .npy of the same factors, named by their index.
    np.save(data_run["dir"] / "factors.npy", y)
    assert eval_run(data_run["run"], "--factors", data_run["dir"] / "factors.npy") == 0
    again = json.loads((data_run["run"] / "eval.json").read_text())["disentanglement"]
    assert again["factors"] == [f"factor {k}" for k in range(5)]
    assert again["mig"]["mig"] == result["mig"]["mig"] and again["dci"] == {**result["dci"],
                                                                            "factors": again["factors"]}


def test_bad_factor_files_are_refused_before_any_scoring(data_run, capsys):
    root, y = data_run["dir"], data_run["factors"]
    cases = [(root / "missing.npy", "no such file"),
             (root / "short.npy", "holds arrays of shapes [(399, 5)] for the run's 400 held-out images"),
             (root / "float.npy", "factors must be integers"),
             (root / "constant.npy", "takes the one value 0 in every row"),
             (root / "text.npy", "not a .npy or .npz file numpy reads")]
    np.save(root / "short.npy", y[:-1])
    np.save(root / "float.npy", y.astype(np.float32))
    np.save(root / "constant.npy", np.stack([np.zeros(len(y), np.int64), y[:, 1]], axis=1))
    (root / "text.npy").write_text("not an array")
    for path, message in cases:
        (data_run["run"] / "eval.json").unlink(missing_ok=True)
        assert eval_run(data_run["run"], "--factors", path) == 2
        captured = capsys.readouterr()
        assert message in captured.err
        assert "IWAE_2" not in captured.out and not (data_run["run"] / "eval.json").exists()


def test_a_run_without_factors_has_no_disentanglement_section(data_run, capsys):
    assert eval_run(data_run["run"]) == 0
    assert json.loads((data_run["run"] / "eval.json").read_text())["disentanglement"] is None
    assert "disentanglement" not in capsys.readouterr().out
