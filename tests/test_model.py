"""Params: the pytree that init builds, its registration, its initial distribution and its checks."""

import math

import optree
import pytest
import torch

import funcvae
from funcvae.model import ModelSpec, check_params

ARCHITECTURES = {
    "mlp": dict(),
    "mlp-deep": dict(hidden=(256, 128), latent=8, activation="gelu"),
    "conv": dict(arch="conv"),
    "conv-gaussian": dict(arch="conv", channels=(8, 16, 32), input_shape=(3, 32, 32), hidden=(), likelihood="gaussian"),
}


def test_default_is_the_classic_784_400_20_mlp():
    params = funcvae.init(seed=0)
    shapes = {path: tuple(t.shape) for path, t in funcvae.leaves_by_path(params).items()}
    assert shapes["encoder/hidden_0/kernel"] == (400, 784)
    assert shapes["encoder/mean/kernel"] == shapes["encoder/logvar/kernel"] == (20, 400)
    assert shapes["decoder/hidden_0/kernel"] == (400, 20)
    assert shapes["decoder/out/kernel"] == (784, 400)
    # 784*400+400 + 2*(400*20+20) + 20*400+400 + 400*784+784, as in the nn.Module VAE.
    assert sum(math.prod(s) for s in shapes.values()) == 652_824
    assert all(t.dtype == torch.float32 for t in optree.tree_leaves(params.tree))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_is_determined_by_the_seed(arch):
    a = funcvae.leaves_by_path(funcvae.init(seed=3, **ARCHITECTURES[arch]))
    b = funcvae.leaves_by_path(funcvae.init(seed=3, **ARCHITECTURES[arch]))
    c = funcvae.leaves_by_path(funcvae.init(seed=4, **ARCHITECTURES[arch]))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder/mean/kernel"], c["encoder/mean/kernel"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_init_output_passes_its_own_checks(arch):
    params = funcvae.init(seed=0, **ARCHITECTURES[arch])
    check_params(params)
    assert ("decoder/obs_logvar" in funcvae.leaves_by_path(params)) == (params.spec.likelihood == "gaussian")


def test_kernels_follow_the_torch_nn_default_distribution():
    kernel = funcvae.init(seed=0).tree["encoder"]["hidden_0"]["kernel"]  # U(-b, b), b = 1/sqrt(784)
    b, n = 1 / math.sqrt(784), kernel.numel()
    assert float(kernel.abs().max()) <= b
    # Mean 0 and variance b^2/3; Var(u^2) = 4 b^4 / 45. Bounds: 5 standard errors.
    assert abs(float(kernel.mean())) <= 5 * math.sqrt(b**2 / 3 / n)
    assert abs(float((kernel**2).mean()) - b**2 / 3) <= 5 * math.sqrt(4 * b**4 / 45 / n)
    linear = torch.nn.Linear(784, 400)
    assert float(linear.weight.detach().abs().max()) <= b  # the same bound as torch's own layer


def test_params_are_an_optree_node_that_keeps_the_spec():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    doubled = optree.tree_map(lambda t: 2 * t, params, namespace="funcvae")
    assert isinstance(doubled, funcvae.Params) and doubled.spec == params.spec
    torch.testing.assert_close(doubled.tree["decoder"]["out"]["bias"], 2 * params.tree["decoder"]["out"]["bias"])
    paths = optree.tree_paths(params, namespace="funcvae")
    assert ("tree", "encoder", "mean", "kernel") in paths


def test_torch_func_transforms_take_params_directly():
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    grads = torch.func.grad(lambda p: p.tree["encoder"]["mean"]["bias"].sum())(params)
    assert isinstance(grads, funcvae.Params) and grads.spec == params.spec
    assert torch.equal(grads.tree["encoder"]["mean"]["bias"], torch.ones(2))
    assert torch.equal(grads.tree["decoder"]["out"]["kernel"], torch.zeros(784, 8))


@pytest.mark.parametrize("fields, match", [
    (dict(arch="rnn"), "arch"),
    (dict(likelihood="poisson"), "likelihood"),
    (dict(activation="swishy"), "activation"),
    (dict(arch="conv", input_shape=(1, 30, 30)), "divisible"),
    (dict(obs_std=0.1), "gaussian"),
    (dict(likelihood="gaussian", obs_std=0.0), "obs_std"),
    (dict(latent=0), ">= 1"),
])
def test_bad_specs_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**fields)
