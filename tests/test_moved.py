"""Names that moved in this release keep working for one release, each with a DeprecationWarning naming its
new place (CHANGELOG.md); names that now belong to a function fail with an error that names the module."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import funcvae
from funcvae import quality
from funcvae._runtime import compiling, records

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old,new", [(f"funcvae.{m}", f"funcvae._runtime.{m}") for m in
                                     ("compiling", "gemm", "threads", "distributed", "lock", "interrupt", "records")]
                         + [("funcvae.validate", "funcvae.inputs")])
def test_an_old_module_path_is_the_module_that_lives_on(old, new):
    # A fresh interpreter: the test session has imported everything already.
    code = (f"import warnings, funcvae, {new} as new; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print(w)\n"
            f"warnings.simplefilter('ignore'); import {old} as old; assert old is new, old")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{old} is now {new}; the old name goes in the next release"


def test_old_attributes_of_the_package_warn():
    with pytest.warns(DeprecationWarning, match=r"funcvae.records is now funcvae._runtime.records"):
        assert funcvae.records is records
    with pytest.warns(DeprecationWarning, match=r"make_step is now funcvae._runtime.compiling.compile_step"):
        assert compiling.make_step is compiling.compile_step


@pytest.mark.parametrize("old,new", [("funcvae.elbo", "funcvae.bounds"), ("funcvae.stack", "funcvae.stacks")])
def test_a_module_path_that_is_now_a_function_is_refused_by_name(old, new):
    with pytest.raises(ImportError, match=f"the module {old} is now {new}"):
        importlib.import_module(old)
    assert callable(getattr(funcvae, old.removeprefix("funcvae.")))


def test_old_fields_of_the_training_states_warn(tmp_path):
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    x = torch.rand(32, 784, generator=torch.Generator().manual_seed(0))
    funcvae.fit(params, x, epochs=1, batch_size=16, compile=False, progress=False, checkpoint_dir=tmp_path)
    ckpt = funcvae.load(tmp_path / funcvae.CHECKPOINT_FILE)
    for old, new in (("opt_state", "opt_state"), ("hyper", "objective_state"), ("count", "count")):
        with pytest.warns(DeprecationWarning, match=f"Checkpoint.{old} is now Checkpoint.train.{new}"):
            assert getattr(ckpt, old) is getattr(ckpt.train, new)
    with pytest.warns(DeprecationWarning, match="TrainState.hyper is now TrainState.objective_state"):
        assert ckpt.train.hyper is ckpt.train.objective_state
    with pytest.raises(TypeError, match=r"is now Checkpoint\(model, TrainState"):
        funcvae.Checkpoint(ckpt.params, ckpt.train.opt_state, ckpt.train.objective_state, ckpt.train.count, 1)


def test_network_name_is_the_old_spelling_of_network():
    x = torch.rand(12, 784, generator=torch.Generator().manual_seed(0))

    def project(images):
        return images.reshape(images.shape[0], -1)[:, :5]
    with pytest.warns(DeprecationWarning, match=r"features\(network_name=...\) is now features\(network=...\)"):
        old = quality.features(x, network_name=project)
    assert torch.equal(old, quality.features(x, network=project))
    with pytest.raises(TypeError, match="both network_name= and network="):
        quality.features(x, network_name=project, network=project)
