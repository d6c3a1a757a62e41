"""``python -m funcvae eval | sample | sweep`` on a slice of real Fashion-MNIST: the files they write, that
their printed tables and their JSON agree, and that the numbers are the library's."""

import argparse
import contextlib
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import funcvae
import funcvae.cli
import funcvae.sweep
from funcvae import diagnostics, optim, pictures, quality
from funcvae._runtime import records
from funcvae.cli import evaluate
from test_pictures import fits  # a picture's grid of rows x columns of images

N, K, SEED = 100, 1000, 5  # eval's --n, --k, --seed
FLOATS = ("recon", "recon_se", "kl", "kl_se", "loss", "loss_se", "elbo", "iwae", "iwae_se", "nll", "gap", "gap_se",
          "iwae_seconds", "mutual_information")


def size(path):
    with Image.open(path) as image:
        return image.size


def fake_load(subset, calls):
    """A stand-in for funcvae.data.load serving the subset (binarised like the real one when asked)."""
    def load(name, split, root=None, binarize=None, seed=0, pixels="float32"):
        calls.append(dict(name=name, split=split, root=root, binarize=binarize, seed=seed))
        x = subset[split].clone()
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(seed)) if binarize == "static" else x
        return as_pixels(x, pixels, binarize)
    return load


def as_pixels(x, pixels: str, binarize):
    """Images in [0, 1] as data.load's ``pixels`` gives them: float32, or their 8-bit levels (0 or 1 when
    binarised)."""
    if pixels == "float32":
        return x
    return (x if binarize == "static" else torch.round(x * 255)).to(torch.uint8)


def cli(*args):
    """Run the CLI; returns (exit code, printed lines)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = funcvae.cli.main([str(a) for a in args])
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def subset(fashion):
    return {"train": fashion[0][:512].clone(), "test": fashion[1][:256].clone()}


@pytest.fixture(scope="module")
def trained(subset, tmp_path_factory):
    """A run folder written by ``train``, and the lines and eval.json of one ``eval`` of it."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(funcvae.data, "load", fake_load(subset, []))
        assert cli("train", "--out", out, "--quiet", "--no-compile", "--epochs", "1", "--hidden", "32",
                   "--latent", "4")[0] == 0
        (run_dir,) = out.iterdir()
        code, lines = cli("eval", run_dir, "--k", K, "--n", N, "--seed", SEED)
    assert code == 0
    return run_dir, lines, json.loads((run_dir / "eval.json").read_text())


@pytest.fixture
def loads(subset, monkeypatch):
    calls = []
    monkeypatch.setattr(funcvae.data, "load", fake_load(subset, calls))
    return calls


@pytest.fixture
def run_dir(trained, tmp_path):
    """A copy of the trained run folder as train left it (without eval's files), for a test to write into."""
    return Path(shutil.copytree(trained[0], tmp_path / trained[0].name,
                                ignore=shutil.ignore_patterns("eval.json", "*.png")))


def test_eval_writes_finite_numbers_that_add_up(trained):
    _, _, result = trained
    assert {"run", "dataset", "split", "binarize", "n", "seed", "iwae_k", "kl_per_dim", "active_units", "latent",
            "active_variance", "findings", "files", *FLOATS} <= set(result)
    assert (result["dataset"], result["split"], result["binarize"]) == ("fashion-mnist", "test", None)
    assert (result["n"], result["iwae_k"], result["seed"], result["latent"]) == (N, K, SEED, 4)
    assert all(isinstance(result[k], float) and math.isfinite(result[k]) for k in FLOATS), result
    assert result["loss"] == pytest.approx(result["recon"] + result["kl"], rel=1e-5)
    assert (result["elbo"], result["nll"]) == (-result["loss"], -result["iwae"])
    assert result["gap"] == pytest.approx(result["iwae"] - result["elbo"], rel=1e-4)
    assert len(result["kl_per_dim"]) == len(result["active_variance"]) == 4
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-4)
    assert 0 <= result["active_units"] <= 4
    assert -0.05 <= result["mutual_information"] <= math.log(N) + 1e-4
    assert all({"name", "severity", "evidence", "advice"} == set(f) for f in result["findings"])


def test_eval_numbers_are_the_librarys(trained, subset):
    run_dir, _, result = trained
    params = funcvae.load_params(run_dir / "params.safetensors")
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    x = subset["test"][:N]
    terms = funcvae.elbo(params, x, seed=SEED)
    bound = funcvae.iwae(params, x, k=K, seed=SEED)
    for key, values in (("recon", terms["recon"]), ("kl", terms["kl"]), ("loss", terms["loss"]), ("iwae", bound)):
        assert result[key] == pytest.approx(float(values.double().mean()), rel=1e-6), key
        assert result[f"{key}_se"] == pytest.approx(float(values.double().std() / math.sqrt(N)), rel=1e-5), key
    assert result["kl_per_dim"] == pytest.approx(diagnostics.kl_per_dim(params, x).tolist(), rel=1e-6)
    active = diagnostics.active_units(params, x)
    assert result["active_units"] == active.count
    assert result["active_variance"] == pytest.approx(active.variance.tolist())
    assert result["mutual_information"] == pytest.approx(float(diagnostics.mutual_information(params, x, seed=SEED)))
    assert result["findings"] == diagnostics.diagnose(history, kl_per_dim=diagnostics.kl_per_dim(params, x),
                                                      active=active) + result["samples"]["findings"]


def test_iwae_is_at_least_the_elbo_within_monte_carlo_error(trained, subset):
    """E[IWAE_k] >= ELBO for every example; the paired per-example differences carry the Monte Carlo error."""
    run_dir, _, result = trained
    params = funcvae.load_params(run_dir / "params.safetensors")
    x = subset["test"][:N]
    diff = (funcvae.iwae(params, x, k=K, seed=SEED) + funcvae.elbo(params, x, seed=SEED)["loss"]).double()
    se = float(diff.std() / math.sqrt(N))
    assert float(diff.mean()) >= -4 * se
    assert result["iwae"] - result["elbo"] >= -4 * result["gap_se"]
    assert result["nll"] <= result["loss"] + 4 * result["gap_se"]  # NLL estimate below -ELBO
    assert result["gap_se"] == pytest.approx(se, rel=1e-4)


def test_eval_draws_the_pictures_with_their_sizes(trained):
    run_dir, _, result = trained
    want = {"reconstructions": (2, 10), "samples": (8, 8), "nearest_training_images": (2, 12),
            "interpolations": (5, 10), "traversal": (4, 9), "loss_curves": None}  # latent 4: 4 rows
    assert result["files"] == {name: str(run_dir / f"{name}.png") for name in want}
    for name, grid in want.items():
        assert fits(run_dir / f"{name}.png", *grid) if grid else size(run_dir / f"{name}.png") == (1200, 350), name


def test_eval_prints_what_it_saves(trained):
    run_dir, lines, result = trained
    assert lines[0] == f"run folder: {run_dir}"
    assert re.fullmatch(rf"IWAE_{K} took \d+\.\d s", next(line for line in lines if line.endswith(" s")))
    rows = {cells[0].strip(): cells[1:] for cells in (line.split(" | ") for line in lines) if len(cells) == 4}
    assert list(rows)[0] == "nats per example"
    for label, key, se, bits in (("reconstruction (distortion)", "recon", "recon_se", "recon"),
                                 ("KL (rate)", "kl", "kl_se", "kl"), ("-ELBO", "loss", "loss_se", "loss"),
                                 (f"-IWAE_{K} (NLL estimate)", "nll", "iwae_se", "nll"),
                                 (f"IWAE_{K} - ELBO", "gap", "gap_se", None),
                                 ("mutual information I(x;z)", "mutual_information", None, None),
                                 ("KL(q(z) || p(z)), prior gap", "aggregate_kl", None, None)):
        value, err, per_dim = (c.strip() for c in rows[label])
        bound = {"mutual_information": ">= ", "aggregate_kl": "<= "}.get(key, "")
        assert value == f"{bound}{result[key]:.2f}", label
        assert err == ("-" if se is None else f"{result[se]:.2f}"), label
        assert per_dim.split()[0] == ("-" if bits is None else f"{result['bits_per_dim'][bits]:.4f}"), label
    assert result["bits_per_dim"]["nll"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    assert rows["active units"][0].strip() == f"{result['active_units']}/4"
    assert f"at most log N = {math.log(N):.2f}" in "\n".join(lines)
    assert result["mi_ceiling"] == pytest.approx(math.log(N))
    assert f"KL per latent dim: {' '.join(f'{v:.2f}' for v in result['kl_per_dim'])}" in lines
    report = diagnostics.format_report(result["findings"], [json.loads(line) for line in
                                                            (run_dir / "history.jsonl").read_text().splitlines()])
    assert report in "\n".join(lines)
    assert lines[-1] == f"wrote {run_dir / 'eval.json'}, " + ", ".join(result["files"].values())


def test_eval_scores_samples_as_the_library_does_and_prints_them(trained, subset):
    run_dir, lines, result = trained
    params = funcvae.load_params(run_dir / "params.safetensors")
    want = quality.sample_quality(params, subset["test"][:N].reshape(N, -1), seed=SEED,
                                  x_train=subset["train"].reshape(-1, 784), network="fashion-mnist")
    got = {k: v for k, v in result["samples"].items() if k != "seconds"}
    assert records.dumps(got) == records.dumps(want) and got["n"] == N // 2
    assert all(f in result["findings"] for f in want["findings"])
    table = evaluate.format_samples_table(result["samples"]).splitlines()
    assert "\n".join(table) in "\n".join(lines)
    for name, line in zip(quality.SETS, table[2:5], strict=True):
        cells = [c.strip() for c in line.split(" | ")]
        assert cells[0].startswith(name) and cells[1] == f"{got['sets'][name]['fid']:.2f}"


@pytest.mark.parametrize("binarize", ["static", "dynamic"])
def test_eval_scores_the_held_out_data_binarised_as_in_training(tmp_path, loads, subset, binarize):
    assert cli("train", "--out", tmp_path, "--quiet", "--no-compile", "--epochs", "1", "--hidden", "16", "--latent",
               "2", "--binarize", binarize, "--seed", "3")[0] == 0
    (run_dir,) = tmp_path.iterdir()
    loads.clear()
    assert cli("eval", run_dir, "--k", "10", "--n", "20")[0] == 0
    static = binarize if binarize == "static" else None  # the training images too, for the memorisation check
    assert loads == [dict(name="fashion-mnist", split=split, root=None, binarize=static, seed=3)
                     for split in ("test", "train")]
    x = subset["test"].reshape(256, -1)
    if binarize == "static":  # data.load's own draw, seeded as train's
        x = torch.bernoulli(x, generator=torch.Generator().manual_seed(3))
    else:  # the fixed draw fit scored its held-out data on (funcvae.train)
        x = torch.bernoulli(x, generator=funcvae.rng.generator(3, "val-binarize"))
    result = json.loads((run_dir / "eval.json").read_text())
    params = funcvae.load_params(run_dir / "params.safetensors")
    assert result["loss"] == pytest.approx(float(funcvae.elbo(params, x[:20], seed=0)["loss"].double().mean()),
                                           rel=1e-6)
    assert result["binarize"] == binarize


def test_eval_of_all_held_out_examples_by_default(run_dir, loads):
    assert cli("eval", run_dir, "--k", "2")[0] == 0
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 256


def test_sample_writes_the_same_picture_for_the_same_seed(run_dir):
    code, lines = cli("sample", run_dir, "--n", "10", "--seed", "4")
    assert code == 0
    path = run_dir / "samples-seed4.png"
    assert lines[-1] == f"wrote {path}, {run_dir / 'samples.json'}"
    assert fits(path, 2, 8)  # 8 per row
    assert json.loads((run_dir / "samples.json").read_text()) == {"n": 10, "seed": 4, "context": None, "path": str(path)}
    first = path.read_bytes()
    assert cli("sample", run_dir, "--n", "10", "--seed", "4")[0] == 0
    assert path.read_bytes() == first
    assert cli("sample", run_dir, "--n", "10", "--seed", "5")[0] == 0
    assert (run_dir / "samples-seed5.png").read_bytes() != first
    params = funcvae.load_params(run_dir / "params.safetensors")
    assert pictures.prior_samples(params, run_dir / "lib.png", n=10, seed=4).read_bytes() == first


def test_sweep_prints_the_table_it_saves_and_the_librarys_numbers(tmp_path, loads, subset):
    args = ["--betas", "0.1", "1", "10", "--epochs", "1", "--hidden", "16", "--latent", "3", "--seed", "2",
            "--batch-size", "128", "--lr", "2e-3"]
    code, lines = cli("sweep", "--out", tmp_path, "--quiet", "--no-compile", *args)
    assert code == 0
    (run_dir,) = tmp_path.iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-sweep-fashion-mnist", run_dir.name)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "rate_distortion.png", "sweep.json"]
    assert lines[0] == f"run folder: {run_dir}"
    assert [(c["split"], c["root"]) for c in loads] == [("train", None), ("test", None)]
    saved = json.loads((run_dir / "sweep.json").read_text())
    assert (saved["n_train"], saved["n_test"]) == (512, 256)
    assert saved["fit"] == dict(betas=[0.1, 1.0, 10.0], epochs=1, seed=2, batch_size=128, lr=2e-3, compile=False,
                                free_bits=None, optimizer="adam", momentum=None, weight_decay=None)
    assert saved["model_file"] is None
    assert size(run_dir / "rate_distortion.png") == (1200, 450)  # rate-distortion and rate-perception panels

    # The table is format_table of the saved rows, and the rows are what the library computes.
    header = lines.index(funcvae.sweep.format_table([]))
    assert "\n".join(lines[header:header + 4]) == funcvae.sweep.format_table(saved["rows"])
    for line, row in zip(lines[header + 1:header + 4], saved["rows"], strict=True):
        beta, rate, distortion, loss, active, fid = (c.strip() for c in line.split(" | "))
        assert (float(beta), rate, distortion, loss, active, fid) == (
            row["beta"], f"{row['rate']:.2f}", f"{row['distortion']:.2f}", f"{row['loss']:.2f}",
            f"{row['active_units']}/3", f"{row['fid']:.2f}")
    params = funcvae.init(seed=2, **saved["model"])
    settings = {k: v for k, v in saved["fit"].items() if k not in ("optimizer", "momentum", "weight_decay")}
    want = funcvae.sweep.rate_distortion(params, subset["train"], val_data=subset["test"], progress=False,
                                         network="fashion-mnist", **settings)  # Adam at lr: the default
    for row in [*want, *saved["rows"]]:
        for record in row["history"]:
            record.pop("seconds")  # wall-clock time: the one number that may differ
    assert json.loads(json.dumps(want)) == saved["rows"]


@pytest.mark.parametrize("args, complaint", [
    (["sweep", "--betas", "1"], "at least 2 betas"),
    (["sweep", "--betas", "1", "2", "1"], "betas must be distinct"),
    (["sweep", "--betas", "-1", "1"], "beta must be a finite number >= 0, got -1.0"),
    (["sweep", "--betas", "nan", "1"], "beta must be a finite number >= 0, got nan"),
    (["sweep", "--betas", "one", "2"], "argument --betas: invalid float value: 'one'"),
    (["sweep", "--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    (["sweep", "--latent", "0"], "latent"),
    (["eval", "RUN", "--k", "0"], "argument --k: must be an int >= 1, got 0"),
    (["eval", "RUN", "--n", "1"], "argument --n: must be an int >= 2, got 1"),
    (["eval", "RUN", "--n", "many"], "argument --n: invalid int value: 'many'"),
    (["sample", "RUN", "--n", "0"], "argument --n: must be an int >= 1, got 0"),
    (["sweep", "--free-bits", "0.5", "--prior", "vamp"], "--free-bits 0.5: free_bits(elbo(beta=0.1, kl='auto'), 0.5) "
                                                         "needs a closed-form KL per latent dimension"),
    (["sweep", "--free-bits", "-1"], "--free-bits -1.0: floor must be a finite number >= 0"),
    (["sweep", "--model", "nofile.py:model"], "--model nofile.py:model: there is no file nofile.py"),
    (["sweep", "--model", "examples/custom_model.py:model", "--latent", "3"], "--latent (options of the built-in"),
    (["sweep", "--pseudo-inputs", "3"], "--pseudo-inputs applies to --prior vamp only"),
    (["sweep", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["sweep", "--optimizer", "sgd", "--lr", "-1"], "lr must be a finite number > 0, got -1.0"),
    (["sweep", "--objective", "iwae"], "unrecognized arguments: --objective iwae"),  # a sweep is of the ELBO's beta
])
def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys, loads, args, complaint):
    args = [a.replace("RUN", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([*args, "--out", str(tmp_path)] if args[0] == "sweep" else args)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err
    assert loads == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["eval", "sample"])
def test_a_folder_that_is_not_a_finished_run_exits_2(tmp_path, capsys, loads, command):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([command, str(tmp_path)])
    assert info.value.code == 2
    assert f"{tmp_path}: no params.safetensors there" in capsys.readouterr().err
    assert loads == []


def test_eval_refuses_more_examples_than_held_out(run_dir, capsys, loads):
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main(["eval", str(run_dir), "--n", "257"])
    assert info.value.code == 2
    assert "--n 257 is more than the 256 held-out examples" in capsys.readouterr().err
    assert not (run_dir / "eval.json").exists()


@pytest.mark.parametrize("command, options", [
    ("train", ("--dataset", "--data-root", "--binarize", "--arch", "--hidden", "--latent", "--likelihood", "--obs-std",
               "--epochs", "--batch-size", "--lr", "--beta", "--kl-warmup", "--seed", "--out", "--quiet", "--model",
               "--objective", "--k", "--prior", "--pseudo-inputs", "--optimizer", "--momentum", "--weight-decay",
               "--free-bits", "--resume", "FILE.py:NAME")),
    ("eval", ("--k", "--n", "--seed", "--data-root", "--quiet")),
    ("sample", ("--n", "--seed", "--data-root", "--quiet")),
    ("sweep", ("--betas", "--epochs", "--dataset", "--hidden", "--latent", "--arch", "--lr", "--batch-size", "--seed",
               "--no-compile", "--out", "--data-root", "--quiet", "--model", "--prior", "--pseudo-inputs",
               "--optimizer", "--momentum", "--weight-decay", "--free-bits")),
])
def test_help_lists_the_options(capsys, command, options):
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in options)


@pytest.mark.parametrize("command, groups", [("train", funcvae.cli.options.GROUPS),
                                             ("sweep", funcvae.cli.options.GROUPS),
                                             ("eval", ("evaluation", "data", "run")),
                                             ("sample", ("sampling", "data", "run"))])
def test_help_is_grouped_and_every_option_shows_its_default(command, groups):
    parser = funcvae.cli._parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    p = sub.choices[command]
    text = p.format_help()
    assert [line[:-1] for line in text.splitlines() if line[:-1] in groups and line.endswith(":")] == list(groups)
    for action in p._actions:
        if not action.option_strings or action.nargs == 0:  # positionals and flags have no default to show
            continue
        shown = p.formatter_class("x")._get_help_string(action)
        assert "default" in shown, f"{command} {action.option_strings[0]}: {shown!r}"


def test_eval_of_a_vamp_prior_run_has_no_kl_per_dim_and_the_rest(tmp_path, loads, subset):
    assert cli("train", "--out", tmp_path, "--quiet", "--no-compile", "--epochs", "1", "--hidden", "16", "--latent",
               "3", "--prior", "vamp", "--pseudo-inputs", "10")[0] == 0
    (run_dir,) = tmp_path.iterdir()
    code, lines = cli("eval", run_dir, "--k", "50", "--n", "40", "--seed", "2")
    assert code == 0
    assert "KL per latent dim: n/a (the VampPrior does not factorise)" in lines
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["kl_per_dim"] is None and result["prior"] == "VampPrior"
    assert all(isinstance(result[k], float) and math.isfinite(result[k]) for k in FLOATS), result
    params = funcvae.load_params(run_dir / "params.safetensors")
    assert params.model.spec.prior == "vamp"
    x = subset["test"][:40]
    terms = funcvae.elbo(params, x, seed=2)  # a Monte Carlo KL: the VampPrior has no closed form
    for key, values in (("recon", terms["recon"]), ("kl", terms["kl"]), ("loss", terms["loss"]),
                        ("iwae", funcvae.iwae(params, x, k=50, seed=2))):
        assert result[key] == pytest.approx(float(values.double().mean()), rel=1e-6), key
    active = diagnostics.active_units(params, x)
    assert (result["active_units"], result["latent"]) == (active.count, 3)
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert result["findings"] == (diagnostics.diagnose(history, kl_per_dim=None, active=active)
                                  + result["samples"]["findings"])
    assert result["iwae"] - result["elbo"] >= -4 * result["gap_se"]
    assert sorted(result["files"]) == sorted(["reconstructions", "samples", "nearest_training_images",
                                              "interpolations", "traversal",
                                              "loss_curves"])


SMALL_MODEL = """
import torch

import funcvae
from funcvae import nn


def init(gen):
    return {"hidden": nn.dense_init(gen, 784, 16), "mean": nn.dense_init(gen, 16, 2),
            "logvar": nn.dense_init(gen, 16, 2), "out": nn.dense_init(gen, 2, 784)}


def encode(tree, x):
    h = torch.tanh(nn.dense(tree["hidden"], x))
    return nn.dense(tree["mean"], h), nn.dense(tree["logvar"], h)


def decode(tree, z):
    return nn.dense(tree["out"], z)


model = funcvae.Model(init=init, encode=encode, decode=decode, latent=2)
"""


@pytest.mark.parametrize("args", [
    ["--optimizer", "adamw", "--weight-decay", "0.05", "--free-bits", "0.1", "--hidden", "16", "--latent", "3"],
    ["--optimizer", "sgd", "--lr", "0.05", "--prior", "vamp", "--pseudo-inputs", "8", "--hidden", "16",
     "--latent", "3"],
    ["--model", "<file>:model", "--free-bits", "0.2"],
], ids=["adamw-free-bits", "sgd-vamp", "model-file"])
def test_sweep_with_the_new_options_is_the_librarys_sweep(tmp_path, loads, subset, args):
    source = tmp_path / "my_vae.py"
    source.write_text(SMALL_MODEL)
    args = [a.replace("<file>", str(source)) for a in args]
    code, _ = cli("sweep", "--out", tmp_path / "runs", "--quiet", "--no-compile", "--betas", "0.5", "2", "--epochs",
                  "1", "--seed", "1", *args)
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    saved = json.loads((run_dir / "sweep.json").read_text())
    fit = saved["fit"]
    if "--model" in args:
        assert saved["model"] is None and saved["model_file"] == f"{source.resolve()}:model"
        params = funcvae.cli.model_from_file(saved["model_file"]).init(seed=1)
    else:
        assert saved["model_file"] is None
        params = funcvae.init(seed=1, **saved["model"])
    optimizer = {"adam": lambda: optim.adam(fit["lr"]),
                 "adamw": lambda: optim.adamw(fit["lr"], weight_decay=fit["weight_decay"]),
                 "sgd": lambda: optim.sgd(fit["lr"], momentum=fit["momentum"])}[fit["optimizer"]]()
    assert optimizer.name in {"adamw(lr=0.001, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.05)",
                              "sgd(lr=0.05, momentum=0.9)", "adam(lr=0.001, b1=0.9, b2=0.999, eps=1e-08)"}
    want = funcvae.sweep.rate_distortion(params, subset["train"], val_data=subset["test"], progress=False,
                                         optimizer=optimizer, free_bits=fit["free_bits"], betas=fit["betas"],
                                         epochs=fit["epochs"], seed=fit["seed"], batch_size=fit["batch_size"],
                                         compile=fit["compile"], network="fashion-mnist")
    for row in [*want, *saved["rows"]]:
        for record in row["history"]:
            record.pop("seconds")
    assert json.loads(json.dumps(want)) == saved["rows"]


def test_ctrl_c_in_eval_exits_130_with_one_line_and_no_traceback(run_dir):
    proc = subprocess.Popen([sys.executable, "-m", "funcvae", "eval", str(run_dir), "--k", "10000000", "--n", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the long IWAE has begun
        if line.startswith("IWAE_"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted: eval stopped on Ctrl-C")
    assert not (run_dir / "eval.json").exists()
