"""``python -m funcvae train`` on a slice of real Fashion-MNIST: the printed table, the run folder, that what
is printed and saved is what the library computes (for every objective, prior and optimiser option), that
bad settings are usage errors before any work, a model of your own from a file, and exact resumes."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcvae
import funcvae.cli
import funcvae.cli.runs
from funcvae import objectives, optim, shorthand

from test_cli_eval import fake_load  # data.load serving a subset

HEADER = "Epoch | Reconstruction Loss | KL Divergence | Total ELBO Loss | Val Recon | Val KL | Val Total | s"
KEYS = ("epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "seconds")
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_model.py"
#: config.json's "fit" settings: FitConfig's, then those that build the objective and the optimiser.
FIT_KEYS = {"epochs", "batch_size", "lr", "seed", "beta", "kl_warmup", "binarize", "compile", "checkpoint_every",
            "on_nonfinite", "matmul_dtype", "objective", "k", "free_bits", "optimizer", "momentum", "weight_decay"}
#: What the settings are when no option names them: the shorthand's defaults (``k``, ``momentum`` and
#: ``weight_decay`` are recorded only for the objective or optimiser they belong to).
DEFAULT_SETTINGS = {**{k: v for k, v in shorthand.DEFAULTS.items() if k in FIT_KEYS}, "epochs": 10, "batch_size": 128,
                    "seed": 0, "binarize": None, "checkpoint_every": None, "on_nonfinite": "raise",
                    "matmul_dtype": None, "k": None, "momentum": None, "weight_decay": None}


@pytest.fixture(scope="module")
def subset(fashion):
    """512 train and 256 held-out real images."""
    return {"train": fashion[0][:512].clone(), "test": fashion[1][:256].clone()}


@pytest.fixture
def loads(subset, monkeypatch):
    """funcvae.data.load serves the subset (binarised like the real one when asked); returns the calls made."""
    calls = []
    monkeypatch.setattr(funcvae.data, "load", fake_load(subset, calls))
    return calls


def train(out, *args):
    return funcvae.cli.main(["train", "--out", str(out), "--quiet", "--no-compile", *args])


CASES = {
    "mlp-bernoulli-2-epochs": (["--epochs", "2", "--hidden", "64", "--latent", "8"],
                               dict(arch="mlp", hidden=(64,), latent=8, likelihood="bernoulli", obs_std=None,
                                    prior="normal"),
                               dict(epochs=2, batch_size=128, lr=1e-3, seed=0, beta=1.0, kl_warmup=0.0, binarize=None)),
    "gaussian-fixed-std": (["--epochs", "1", "--hidden", "32", "16", "--latent", "4", "--likelihood", "gaussian",
                            "--obs-std", "0.2", "--lr", "3e-3", "--beta", "0.5", "--seed", "3", "--activation", "tanh"],
                           dict(hidden=(32, 16), latent=4, likelihood="gaussian", obs_std=0.2, activation="tanh"),
                           dict(epochs=1, lr=3e-3, beta=0.5, seed=3)),
    "static-binarised-warm-up": (["--epochs", "1", "--hidden", "32", "--binarize", "static", "--kl-warmup", "2",
                                  "--batch-size", "100"],
                                 dict(hidden=(32,), latent=20), dict(epochs=1, batch_size=100, kl_warmup=2.0,
                                                                     binarize=None)),
    "dynamic-binarised": (["--epochs", "1", "--hidden", "32", "--binarize", "dynamic", "--seed", "1"],
                          dict(hidden=(32,)), dict(epochs=1, seed=1, binarize="dynamic")),
    "bfloat16-products": (["--epochs", "1", "--hidden", "32", "--bf16"], dict(hidden=(32,)),
                          dict(epochs=1, matmul_dtype="bfloat16")),
    "iwae-k3": (["--epochs", "2", "--hidden", "32", "--latent", "4", "--objective", "iwae", "--k", "3"],
                dict(hidden=(32,), latent=4), dict(epochs=2, objective="iwae", k=3, beta=None, kl_warmup=None)),
    "iwae-default-k": (["--epochs", "1", "--hidden", "16", "--latent", "2", "--objective", "iwae"],
                       dict(hidden=(16,), latent=2), dict(epochs=1, objective="iwae", k=5, beta=None, kl_warmup=None)),
    "vamp-prior": (["--epochs", "2", "--hidden", "32", "--latent", "4", "--prior", "vamp", "--pseudo-inputs", "20"],
                   dict(hidden=(32,), latent=4, prior="vamp", pseudo_inputs=20), dict(epochs=2)),
    "vamp-prior-iwae": (["--epochs", "1", "--hidden", "16", "--latent", "2", "--prior", "vamp", "--pseudo-inputs", "5",
                         "--objective", "iwae", "--k", "2"],
                        dict(hidden=(16,), latent=2, prior="vamp", pseudo_inputs=5),
                        dict(epochs=1, objective="iwae", k=2, beta=None, kl_warmup=None)),
    "free-bits-warm-up": (["--epochs", "2", "--hidden", "32", "--latent", "4", "--free-bits", "0.25", "--kl-warmup",
                           "1", "--beta", "2"],
                          dict(hidden=(32,), latent=4), dict(epochs=2, free_bits=0.25, kl_warmup=1.0, beta=2.0)),
    "adamw": (["--epochs", "2", "--hidden", "32", "--latent", "4", "--optimizer", "adamw", "--lr", "2e-3",
               "--weight-decay", "0.05"],
              dict(hidden=(32,), latent=4), dict(epochs=2, optimizer="adamw", lr=2e-3, weight_decay=0.05)),
    "adamw-default-decay": (["--epochs", "1", "--hidden", "16", "--latent", "2", "--optimizer", "adamw"],
                            dict(hidden=(16,), latent=2), dict(epochs=1, optimizer="adamw", weight_decay=0.01)),
    "sgd-default-momentum": (["--epochs", "2", "--hidden", "32", "--latent", "4", "--optimizer", "sgd", "--lr", "0.01"],
                             dict(hidden=(32,), latent=4), dict(epochs=2, optimizer="sgd", lr=0.01, momentum=0.9)),
    "sgd-no-momentum": (["--epochs", "1", "--hidden", "16", "--latent", "2", "--optimizer", "sgd", "--momentum", "0"],
                        dict(hidden=(16,), latent=2), dict(epochs=1, optimizer="sgd", momentum=0.0)),
}


def fit_config(settings: dict) -> dict:
    """The settings that are FitConfig fields."""
    return {k: v for k, v in settings.items() if k not in ("lr", "beta", "kl_warmup", "objective", "k", "free_bits",
                                                            "optimizer", "momentum", "weight_decay")}


@pytest.mark.parametrize("args,model,settings", CASES.values(), ids=CASES.keys())
def test_train_prints_the_table_and_saves_the_run(tmp_path, capsys, loads, args, model, settings):
    assert train(tmp_path, *args) == 0
    lines = capsys.readouterr().out.splitlines()

    # The run folder: the one printed, holding exactly the three files.
    (run_dir,) = list(tmp_path.iterdir())
    assert lines[0] == f"run folder: {run_dir}"
    assert re.fullmatch(r"\d{8}-\d{6}-fashion-mnist-(mlp|conv)-seed\d+", run_dir.name)
    assert sorted(os.listdir(run_dir)) == ["checkpoint.safetensors", "config.json", "history.jsonl", "params.safetensors"]

    # config.json: the model spec and the fit settings, every one of them as the options (or defaults) say.
    config = json.loads((run_dir / "config.json").read_text())
    params = funcvae.load_params(run_dir / "params.safetensors")
    assert funcvae.ModelSpec.from_dict(config["model"]) == params.model.spec and config["model_file"] is None
    assert all(getattr(params.model.spec, k) == v for k, v in model.items())
    assert set(config["fit"]) == FIT_KEYS
    assert config["fit"]["matmul_dtype"] == ("bfloat16" if "--bf16" in args else None)
    assert config["fit"]["compile"] is False  # --no-compile
    assert {k: v for k, v in config["fit"].items() if k != "compile"} == {**DEFAULT_SETTINGS, **settings}
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
        if config["fit"]["objective"] == "elbo":
            assert record["loss"] == pytest.approx(record["recon"] + config["fit"]["beta"] * record["kl"])
        else:  # -IWAE_k of each example is at most the mean of its k samples' recon + kl (Jensen)
            assert record["beta"] is None and record["loss"] <= record["recon"] + record["kl"] + 1e-4

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

    # Reproducible from config.json alone: the same fit gives the same params and history. The beta-ELBO with
    # Adam through fit's own shorthand (lr, beta, kl_warmup); the other options through objects made here.
    fit = config["fit"]
    data = {s: funcvae.data.load(config["dataset"], s, binarize=static, seed=fit["seed"]) for s in ("train", "test")}
    start = funcvae.init(seed=fit["seed"], **config["model"])
    if (fit["objective"], fit["free_bits"], fit["optimizer"]) == ("elbo", None, "adam"):
        chosen = dict(lr=fit["lr"], beta=fit["beta"], kl_warmup=fit["kl_warmup"])
    else:
        (objective,), (optimizer,) = shorthand.build(fit, math.ceil(config["n_train"] / fit["batch_size"]))
        chosen = dict(objective=objective, optimizer=optimizer)
    want, want_history = funcvae.fit(start, data["train"], val_data=data["test"], progress=False, **chosen,
                                     **fit_config(fit))
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
    monkeypatch.setattr(funcvae.cli.runs.time, "strftime", lambda fmt, *args: "20250101-120000")
    for lr in ("1e-3", "3e-3"):
        assert train(tmp_path, "--epochs", "1", "--hidden", "8", "--latent", "2", "--batch-size", "256",
                     "--lr", lr) == 0
    assert len(list(tmp_path.iterdir())) == 2


def test_sgd_without_an_explicit_momentum_takes_0_9(tmp_path, loads):
    assert train(tmp_path, "--epochs", "1", "--hidden", "8", "--latent", "2", "--optimizer", "sgd") == 0
    (run_dir,) = tmp_path.iterdir()
    settings = json.loads((run_dir / "config.json").read_text())["fit"]
    assert (settings["optimizer"], settings["lr"], settings["momentum"]) == ("sgd", 1e-3, 0.9)


# A model of the user's own, in a file: ``--model FILE.py:NAME``.

MODEL_FILE = '''
import torch

import funcvae
from funcvae import nn


def init(gen):
    return {"hidden": nn.dense_init(gen, 784, 16), "mean": nn.dense_init(gen, 16, 2),
            "logvar": nn.dense_init(gen, 16, 2), "up": nn.dense_init(gen, 2, 16), "out": nn.dense_init(gen, 16, 784)}


def encode(tree, x):
    h = torch.tanh(nn.dense(tree["hidden"], x))
    return nn.dense(tree["mean"], h), nn.dense(tree["logvar"], h)


def decode(tree, z):
    return nn.dense(tree["out"], torch.tanh(nn.dense(tree["up"], z)))


model = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli", latent=2)
vamp = funcvae.Model(init=init, encode=encode, decode=decode, likelihood="bernoulli", latent=2,
                     prior=funcvae.priors.vamp(10))
def small_init(gen):
    return {**init(gen), "hidden": nn.dense_init(gen, 196, 16), "out": nn.dense_init(gen, 16, 196)}


small = funcvae.Model(init=small_init, encode=encode, decode=decode, input_shape=(1, 14, 14), latent=2)
not_a_model = 42
'''


@pytest.fixture
def model_file(tmp_path):
    """A small model of one's own (784-16-2, tanh, Bernoulli; also with a VampPrior, and one for 14x14 inputs)."""
    path = tmp_path / "src" / "my_vae.py"
    path.parent.mkdir()
    path.write_text(MODEL_FILE)
    return path


@pytest.mark.parametrize("args,complaint", [
    (["--free-bits", "0.5", "--objective", "iwae"], "--free-bits 0.5: free bits floor the KL of each latent dimension"),
    (["--free-bits", "0.5", "--prior", "vamp"], "--free-bits 0.5: free_bits(elbo(beta=1.0, kl='auto'), 0.5) needs a "
                                                "closed-form KL per latent dimension, which the VampPrior"),
    (["--model", "<file>:vamp", "--free-bits", "0.5"], "--free-bits 0.5: free_bits(elbo(beta=1.0, kl='auto'), 0.5) "
                                                     "needs a closed-form KL per latent dimension"),
    (["--free-bits", "-1"], "--free-bits -1.0: floor must be a finite number >= 0, got -1.0"),
    (["--k", "5"], "--k (importance samples) applies to --objective iwae only"),
    (["--objective", "elbo", "--k", "5"], "--k (importance samples) applies to --objective iwae only"),
    (["--objective", "iwae", "--k", "0"], "argument --k: must be an int >= 1, got 0"),
    (["--objective", "iwae", "--beta", "2"], "--objective iwae has no KL weight to set (--beta are options"),
    (["--objective", "iwae", "--beta", "1", "--kl-warmup", "2"], "no KL weight to set (--beta and --kl-warmup are"),
    (["--objective", "vae"], "argument --objective: invalid choice: 'vae'"),
    (["--kl-warmup", "-1"], "--kl-warmup must be a finite number of epochs >= 0, got -1.0"),
    (["--kl-warmup", "nan"], "--kl-warmup must be a finite number of epochs >= 0, got nan"),
    (["--prior", "laplace"], "argument --prior: invalid choice: 'laplace'"),
    (["--pseudo-inputs", "10"], "--pseudo-inputs applies to --prior vamp only"),
    (["--prior", "vamp", "--pseudo-inputs", "0"], "argument --pseudo-inputs: must be an int >= 1, got 0"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["--optimizer", "adamw", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only"),
    (["--weight-decay", "0.1"], "--weight-decay applies to --optimizer adamw only"),
    (["--optimizer", "sgd", "--weight-decay", "0.1"], "--weight-decay applies to --optimizer adamw only"),
    (["--optimizer", "sgd", "--momentum", "1"], "momentum must be in [0, 1), got 1.0"),
    (["--optimizer", "adamw", "--weight-decay", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["--optimizer", "sgd", "--lr", "0"], "lr must be a finite number > 0, got 0.0"),
    (["--epochs", "0"], "argument --epochs: must be an int >= 1, got 0"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be an int >= 1, got 0"),
    (["--model", "nofile.py:model"], "--model nofile.py:model: there is no file nofile.py"),
    (["--model", "<file>:nothing"], "<file> defines no 'nothing'"),
    (["--model", "<file>:not_a_model"], "--model <file>:not_a_model: not_a_model must be a funcvae.Model, not int"),
    (["--model", "<file>"], "--model '<file>' is not FILE.py:NAME (e.g. my_vae.py:model)"),
    (["--model", "<file>:"], "--model '<file>:' is not FILE.py:NAME"),
    (["--model", "<file>:not an identifier"], "is not FILE.py:NAME"),
    (["--model", "<file>:model", "--latent", "3"], "--latent (options of the built-in models) cannot be used with it"),
    (["--model", "<file>:model", "--prior", "vamp", "--arch", "mlp"], "--arch, --prior (options of the built-in"),
    (["--model", "<file>:model", "--hidden"], "--hidden (options of the built-in models)"),
    (["--model", "<bad>vae_syntax.py:model"], "running <bad>vae_syntax.py failed: SyntaxError at line 2"),
    (["--model", "<bad>vae_relative.py:model"], "attempted relative import with no known parent package; a model file "
                                            "is run on its own"),
    (["--model", "<bad>vae_exits.py:model"], "running <bad>vae_exits.py failed: it called sys.exit(3)"),
    (["--model", "<bad>vae_raises.py:model"], "vae_raises.py:model: the model fails its check: KeyError: 'inside'"),
    (["--model", "<bad>vae_random.py:model"], "the model fails its check: ValueError: the model's encode breaks the "
                                          "contract: it draws random numbers"),
])
def test_bad_settings_are_usage_errors_before_any_work(tmp_path, capsys, loads, model_file, args, complaint):
    bad = _bad_model_files(model_file.parent)
    args = [a.replace("<file>", str(model_file)).replace("<bad>", bad) for a in args]
    with pytest.raises(SystemExit) as info:
        train(tmp_path / "runs", "--hidden", "8", *args) if "--model" not in args else train(tmp_path / "runs", *args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert complaint.replace("<file>", str(model_file)).replace("<bad>", bad) in err and "Traceback" not in err
    assert loads == [] and not (tmp_path / "runs").exists()


def _bad_model_files(folder) -> str:
    """Model files that cannot be used, beside the good one; the prefix of their paths."""
    good = MODEL_FILE.replace("def encode(tree, x):\n", "def encode(tree, x):\n    {line}\n")
    files = {"vae_syntax.py": "import torch\ndef broken(:\n", "vae_relative.py": "from .my_vae import model\n",
             "vae_exits.py": "import sys\nsys.exit(3)\n",
             "vae_raises.py": good.replace("{line}", "raise KeyError('inside')"),
             "vae_random.py": good.replace("{line}", "x = x + torch.rand(784)")}
    for name, text in files.items():
        (folder / name).write_text(text)
    return str(folder) + "/"


def test_a_model_file_imports_a_module_beside_it_from_any_folder(tmp_path, monkeypatch):
    from funcvae.cli.model import model_from_file
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "sizes_for_vae.py").write_text("LATENT = 2\n")
    (folder / "vae.py").write_text(MODEL_FILE.replace("import funcvae\n", "import funcvae\nimport sizes_for_vae\n"))
    monkeypatch.chdir(tmp_path)
    assert model_from_file(f"{folder / 'vae.py'}:model").latent == 2


def test_options_are_checked_before_the_model_file_runs(tmp_path, capsys, loads, model_file):
    marker = tmp_path / "ran"
    model_file.write_text(f"open({str(marker)!r}, 'w').close()\n" + MODEL_FILE)
    with pytest.raises(SystemExit):
        train(tmp_path / "runs", "--model", f"{model_file}:model", "--k", "5")
    assert "--k (importance samples) applies to --objective iwae only" in capsys.readouterr().err
    assert not marker.exists()


def test_a_model_for_other_inputs_than_the_data_is_refused_before_the_run_folder(tmp_path, capsys, loads, model_file):
    with pytest.raises(SystemExit) as info:
        train(tmp_path / "runs", "--model", f"{model_file}:small")
    assert info.value.code == 2
    assert "the model takes 1x14x14 inputs, the data are 1x28x28" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def load_example():
    spec = importlib.util.spec_from_file_location("custom_model_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_model_trains_evaluates_and_samples_from_its_file(tmp_path, capsys, loads, subset):
    source = tmp_path / "src" / "custom_model.py"
    source.parent.mkdir()
    shutil.copy(EXAMPLE, source)
    assert train(tmp_path / "runs", "--model", f"{source}:model", "--epochs", "1", "--objective", "iwae",
                 "--k", "2") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-fashion-mnist-custom_model-seed0", run_dir.name)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] is None and config["model_file"] == f"{source.resolve()}:model"
    assert (config["fit"]["objective"], config["fit"]["k"]) == ("iwae", 2)

    # Its params need the model to be read (the file holds no code), and are fit's with the example's model.
    with pytest.raises(ValueError, match="pass it: load_params"):
        funcvae.load_params(run_dir / "params.safetensors")
    model = funcvae.cli.model_from_file(config["model_file"])
    params = funcvae.load_params(run_dir / "params.safetensors", model=model)
    example = load_example().model
    want, _ = funcvae.fit(example.init(seed=0), subset["train"], epochs=1, val_data=subset["test"],
                          objective=objectives.iwae(2), optimizer=optim.adam(1e-3), compile=False, progress=False)
    got, want = funcvae.leaves_by_path(params), funcvae.leaves_by_path(want)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert {k: tuple(t.shape) for k, t in got.items() if k.endswith("kernel")} == {
        "encoder/hidden_0/kernel": (200, 784), "encoder/hidden_1/kernel": (200, 200),
        "encoder/mean/kernel": (50, 200), "encoder/logvar/kernel": (50, 200),
        "decoder/hidden_0/kernel": (200, 50), "decoder/hidden_1/kernel": (200, 200),
        "decoder/logits/kernel": (784, 200)}

    # eval: the library's numbers on the params of the recorded model file.
    assert funcvae.cli.main(["eval", str(run_dir), "--k", "10", "--n", "20", "--seed", "1"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    x = subset["test"][:20]
    assert result["loss"] == pytest.approx(float(funcvae.elbo(params, x, seed=1)["loss"].double().mean()), rel=1e-6)
    assert result["iwae"] == pytest.approx(float(funcvae.iwae(params, x, k=10, seed=1).double().mean()), rel=1e-6)
    assert len(result["kl_per_dim"]) == result["latent"] == 50
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl"], rel=1e-4)

    # sample: the library's picture.
    assert funcvae.cli.main(["sample", str(run_dir), "--n", "4", "--seed", "2"]) == 0
    picture = funcvae.pictures.prior_samples(params, tmp_path / "lib.png", n=4, seed=2)
    assert (run_dir / "samples-seed2.png").read_bytes() == picture.read_bytes()

    # Without its file the run cannot be read: a usage error that names the file.
    source.unlink()
    capsys.readouterr()
    for command in ("eval", "sample"):
        with pytest.raises(SystemExit) as info:
            funcvae.cli.main([command, str(run_dir)])
        assert info.value.code == 2
        assert f"the run's model file {source.resolve()}:model: there is no file {source.resolve()}" in \
            capsys.readouterr().err


RESUMES = {
    "iwae-vamp-adamw": ["--objective", "iwae", "--k", "3", "--prior", "vamp", "--pseudo-inputs", "10",
                        "--optimizer", "adamw", "--hidden", "16", "--latent", "4"],
    "free-bits-warm-up-sgd": ["--free-bits", "0.2", "--kl-warmup", "3", "--beta", "0.5", "--optimizer", "sgd",
                              "--lr", "0.01", "--hidden", "16", "--latent", "4", "--binarize", "dynamic"],
    "model-file-iwae-adamw": ["--model", "<file>:model", "--objective", "iwae", "--k", "2", "--optimizer", "adamw"],
    "model-file-vamp": ["--model", "<file>:vamp", "--batch-size", "100"],
}


@pytest.mark.parametrize("args", RESUMES.values(), ids=RESUMES.keys())
def test_train_resume_continues_bit_identically(tmp_path, capsys, loads, model_file, args):
    """1 epoch, then ``--resume --epochs 3``, is the 3-epoch run: params, optimiser state, history."""
    args = [a.replace("<file>", str(model_file)) for a in args]
    assert train(tmp_path / "straight", "--epochs", "3", *args) == 0
    assert train(tmp_path / "split", "--epochs", "1", *args) == 0
    (straight,), (split,) = (tmp_path / "straight").iterdir(), (tmp_path / "split").iterdir()
    capsys.readouterr()
    assert funcvae.cli.main(["train", "--resume", str(split), "--epochs", "3", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"run folder: {split}"
    assert [line.split(" | ")[0].strip() for line in lines[lines.index(HEADER) + 1:-1]] == ["1", "2", "3"]

    config = json.loads((split / "config.json").read_text())
    assert config == json.loads((straight / "config.json").read_text())
    model = funcvae.cli.model_from_file(config["model_file"]) if config["model_file"] else None
    for name in ("params.safetensors",):
        a, b = (funcvae.leaves_by_path(funcvae.load_params(run / name, model=model)) for run in (straight, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (funcvae.load(run / "checkpoint.safetensors", model=model) for run in (straight, split))
    assert a.train.opt_state.keys() == b.train.opt_state.keys() and all(
        torch.equal(a.train.opt_state[k], b.train.opt_state[k]) for k in a.train.opt_state)
    assert torch.equal(a.train.count, b.train.count) and a.config == b.config
    histories = [[{k: v for k, v in json.loads(line).items() if k != "seconds"}
                  for line in (run / "history.jsonl").read_text().splitlines()] for run in (straight, split)]
    assert histories[0] == histories[1] and len(histories[0]) == 3


@pytest.mark.parametrize("extra", [["--objective", "iwae"], ["--lr", "0.01"], ["--seed", "1"], ["--hidden", "16"],
                                   ["--optimizer", "sgd"], ["--free-bits", "0.1"], ["--model", "x.py:model"],
                                   ["--batch-size", "64"], ["--bf16"]])
def test_resume_refuses_options_that_would_change_the_run(tmp_path, capsys, loads, extra):
    assert train(tmp_path, "--epochs", "1", "--hidden", "8", "--latent", "2") == 0
    (run_dir,) = tmp_path.iterdir()
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    loads.clear()
    with pytest.raises(SystemExit) as info:
        funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", *extra])
    assert info.value.code == 2
    assert f"{extra[0]} would change them" in capsys.readouterr().err
    assert loads == [] and {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_resume_of_a_checkpoint_made_with_other_settings_is_a_one_line_error(tmp_path, capsys, loads):
    """config.json edited after the run (another seed): fit refuses the checkpoint, train says why in one line."""
    assert train(tmp_path, "--epochs", "1", "--hidden", "8", "--latent", "2") == 0
    (run_dir,) = tmp_path.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    config["fit"]["seed"] = 1
    (run_dir / "config.json").write_text(json.dumps(config))
    kept = {name: (run_dir / name).read_bytes() for name in ("checkpoint.safetensors", "params.safetensors")}
    capsys.readouterr()
    assert funcvae.cli.main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot resume from {run_dir / 'checkpoint.safetensors'}: it was made with other "
                          "settings or data (")
    assert "seed: checkpoint [0], now [1]" in err
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept


def test_a_run_folder_from_before_the_objective_options_resumes(tmp_path, loads):
    """config.json without the objective and optimiser settings: the beta-ELBO and Adam, as such runs were."""
    args = ["--hidden", "8", "--latent", "2", "--beta", "0.5", "--kl-warmup", "1", "--lr", "2e-3"]
    assert train(tmp_path / "straight", "--epochs", "2", *args) == 0
    assert train(tmp_path / "old", "--epochs", "1", *args) == 0
    (straight,), (old,) = (tmp_path / "straight").iterdir(), (tmp_path / "old").iterdir()
    config = json.loads((old / "config.json").read_text())
    for key in ("objective", "k", "free_bits", "optimizer", "momentum", "weight_decay"):
        del config["fit"][key]
    del config["model_file"]
    (old / "config.json").write_text(json.dumps(config))
    assert funcvae.cli.main(["train", "--resume", str(old), "--epochs", "2", "--quiet"]) == 0
    a, b = (funcvae.leaves_by_path(funcvae.load_params(run / "params.safetensors")) for run in (straight, old))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_whose_model_file_changed_is_refused_unless_accepted(tmp_path, capsys, loads, model_file):
    assert train(tmp_path / "runs", "--model", f"{model_file}:model", "--epochs", "1") == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    model_file.write_text(MODEL_FILE.replace("torch.tanh(nn.dense(tree[\"hidden\"], x))",
                                             "torch.relu(nn.dense(tree[\"hidden\"], x))"))  # same leaves, other code
    capsys.readouterr()
    assert funcvae.cli.main(["sample", str(run_dir), "--n", "8"]) == 2
    err = capsys.readouterr().err
    assert "was written by other model code (the files defining its functions)" in err and "Traceback" not in err
    assert funcvae.cli.main(["sample", str(run_dir), "--n", "8", "--accept-changed-code"]) == 0
