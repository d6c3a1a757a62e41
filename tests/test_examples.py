"""The examples on a small real subset: a model of one's own (the IWAE paper's MLP) is that architecture, trains
on either bound, scores, saves and loads; a loop of one's own from the public pieces is the library's step
and raises the ELBO; both scripts run as documented."""

import importlib.util
import math
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcvae

from test_cli_eval import as_pixels  # data.load's pixels="uint8" of served images

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example(name: str):
    """The module of ``examples/<name>.py`` (run as a module, so its ``main`` does not run)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def loads(fashion, monkeypatch):
    """funcvae.data.load serves the real subsets (2048 train, 1000 held-out images); returns the calls made."""
    calls = []

    def load(name, split, root=None, binarize=None, seed=0, pixels="float32"):
        calls.append((name, split))
        return as_pixels(fashion[0 if split == "train" else 1].clone(), pixels, binarize)

    monkeypatch.setattr(funcvae.data, "load", load)
    return calls


def paired_gain(after, before) -> tuple[float, float]:
    """Mean and standard error of per-example differences."""
    diff = (after - before).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(diff.shape[0]))


def test_the_custom_model_is_the_iwae_papers_mlp():
    """784-200-200-50 tanh encoder and 50-200-200-784 tanh decoder of Bernoulli logits, as torch.nn computes them."""
    module = example("custom_model")
    model = module.model
    assert isinstance(model, funcvae.Model) and model.latent == 50 and model.input_shape == (1, 28, 28)
    assert isinstance(model.likelihood, type(funcvae.likelihoods.bernoulli()))
    params = model.init(seed=0)
    tree = params.tree

    def layers(part, names):
        out = []
        for name in names:
            layer = torch.nn.Linear(*reversed(tree[part][name]["kernel"].shape))
            layer.load_state_dict({"weight": tree[part][name]["kernel"], "bias": tree[part][name]["bias"]})
            out.append(layer)
        return out

    h0, h1, mean, logvar = layers("encoder", ["hidden_0", "hidden_1", "mean", "logvar"])
    d0, d1, logits = layers("decoder", ["hidden_0", "hidden_1", "logits"])
    assert [(l.in_features, l.out_features) for l in (h0, h1, mean, d0, d1, logits)] == [
        (784, 200), (200, 200), (200, 50), (50, 200), (200, 200), (200, 784)]
    x, z = torch.rand(784), torch.randn(50)
    with torch.no_grad():
        h = torch.nn.Sequential(h0, torch.nn.Tanh(), h1, torch.nn.Tanh())(x)
        got_mean, got_logvar = module.encode(tree, x)
        torch.testing.assert_close(got_mean, mean(h))
        torch.testing.assert_close(got_logvar, logvar(h))
        torch.testing.assert_close(module.decode(tree, z),
                                   torch.nn.Sequential(d0, torch.nn.Tanh(), d1, torch.nn.Tanh(), logits)(z))


@pytest.mark.parametrize("objective", [["--objective", "elbo"], ["--objective", "iwae", "--k", "3"]],
                         ids=["elbo", "iwae-k3"])
def test_the_custom_model_trains_scores_saves_and_loads(tmp_path, capsys, loads, fashion, objective):
    module = example("custom_model")
    path = tmp_path / "sub" / "params.safetensors"
    result = module.main(["--epochs", "2", "--n-train", "300", "--n-test", "200", "--no-compile", "--eval-k", "50",
                          "--out", str(path), *objective])
    assert loads == [("fashion-mnist", "train"), ("fashion-mnist", "test")]
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["loss"] < history[0]["loss"]
    assert history[1]["val_loss"] < history[0]["val_loss"]

    # Saved, and loaded back with the model passed in: the same numbers.
    assert path.is_file() and result["path"] == path
    loaded = funcvae.load_params(path, model=module.model)
    with pytest.raises(ValueError, match="pass it"):
        funcvae.load_params(path)
    got, want = funcvae.leaves_by_path(result["params"]), funcvae.leaves_by_path(loaded)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)

    # The held-out scores are funcvae.elbo's and funcvae.iwae's; training raised the ELBO far beyond its noise,
    # and IWAE_50 is at least the ELBO within Monte Carlo error.
    x = fashion[1][:200]
    elbo = -funcvae.elbo(loaded, x, seed=0)["loss"]
    iwae = funcvae.iwae(loaded, x, k=50, seed=0)
    assert result["elbo"] == pytest.approx(float(elbo.double().mean()), rel=1e-6)
    assert result["iwae"] == pytest.approx(float(iwae.double().mean()), rel=1e-6)
    assert result["elbo_se"] == pytest.approx(float(elbo.double().std() / math.sqrt(200)), rel=1e-6)
    gain, se = paired_gain(elbo, -funcvae.elbo(module.model.init(seed=0), x, seed=0)["loss"])
    assert gain > 10 * se, (gain, se)
    gap, se = paired_gain(iwae, elbo)
    assert gap > -4 * se, (gap, se)
    out = capsys.readouterr().out
    assert f"saved {path}; loaded back identical" in out
    assert re.search(r"held-out: ELBO -\d+\.\d\d \+- \d+\.\d\d, IWAE_50 -\d+\.\d\d", out)


def test_own_loop_raises_the_elbo_every_epoch(capsys, loads, fashion):
    module = example("own_loop")
    params, elbos = module.main(["--epochs", "3", "--n-train", "512", "--hidden", "32", "--latent", "4"])
    assert loads == [("fashion-mnist", "train")]
    assert len(elbos) == 3 and elbos[0] < elbos[1] < elbos[2], elbos
    assert capsys.readouterr().out.splitlines() == [f"epoch {i}: ELBO {e:.2f} nats per example"
                                                    for i, e in enumerate(elbos, 1)]
    x = fashion[1][:500]
    start = funcvae.init(seed=0, hidden=(32,), latent=4)
    gain, se = paired_gain(-funcvae.elbo(params, x, seed=1)["loss"], -funcvae.elbo(start, x, seed=1)["loss"])
    assert gain > 10 * se, (gain, se)


def test_own_loop_takes_the_librarys_step(fashion):
    """One step of the loop (one batch of all examples) is ``make_train_step``'s step on the same batch and noise,
    and the loop is deterministic."""
    module = example("own_loop")
    x = fashion[0][:256].reshape(256, -1)
    params = funcvae.init(seed=3, hidden=(16,), latent=2)
    got, _ = module.train(params, x, epochs=1, batch_size=256, lr=1e-2, seed=5)
    again, _ = module.train(params, x, epochs=1, batch_size=256, lr=1e-2, seed=5)
    gen = torch.Generator().manual_seed(5)  # the loop's draws, in its order: the batch order, then the noise
    rows = torch.randperm(256, generator=gen)
    eps = torch.randn(256, 1, 2, generator=gen)
    objective, optimizer = funcvae.objectives.elbo(), funcvae.optim.adam(1e-2)
    step = funcvae.make_train_step(params.model, objective, optimizer)
    state, _ = step(funcvae.init_state(params, objective, optimizer), funcvae.Batch(x[rows], eps, torch.ones(256)))
    want = funcvae.leaves_by_path(funcvae.Params(params.model, state.tree))
    got, again = funcvae.leaves_by_path(got), funcvae.leaves_by_path(again)
    assert got.keys() == want.keys()
    for k in got:
        assert torch.equal(got[k], again[k]), k
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got["encoder/mean/kernel"], params.tree["encoder"]["mean"]["kernel"])


def test_own_loop_runs_as_a_script(tmp_path, fashion):
    """``python3 examples/own_loop.py`` in a fresh interpreter, on the real data."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(EXAMPLES / "own_loop.py"), "--epochs", "1", "--n-train", "256",
                             "--hidden", "16", "--latent", "2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"epoch 1: ELBO -\d+\.\d\d nats per example\n", result.stdout)


def test_custom_model_runs_as_a_script(tmp_path, monkeypatch, capsys, loads):
    """``python3 examples/custom_model.py``: its ``__main__`` block, which saves under the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["custom_model.py", "--epochs", "1", "--n-train", "200", "--n-test", "50",
                                      "--no-compile", "--eval-k", "5"])
    runpy.run_path(str(EXAMPLES / "custom_model.py"), run_name="__main__")
    path = Path("runs") / "custom_model.safetensors"  # the default --out
    assert f"saved {path}; loaded back identical" in capsys.readouterr().out
    params = funcvae.load_params(tmp_path / path, model=example("custom_model").model)
    assert params.model.latent == 50


def test_the_examples_take_each_data_set_their_model_fits(capsys):
    """own_loop builds its model for the data set's image size (shapes: 32 x 32); custom_model's 784 inputs
    take the 28 x 28 data sets only, and refuse shapes before any work."""
    params, elbos = example("own_loop").main(["--dataset", "shapes", "--epochs", "1", "--n-train", "256",
                                              "--hidden", "8", "--latent", "2"])
    assert params.model.input_shape == funcvae.data.INPUT_SHAPES["shapes"] == (1, 32, 32)
    assert len(elbos) == 1 and math.isfinite(elbos[0])
    with pytest.raises(SystemExit) as info:
        example("custom_model")._parser().parse_args(["--dataset", "shapes"])
    assert info.value.code == 2 and "invalid choice: 'shapes'" in capsys.readouterr().err
