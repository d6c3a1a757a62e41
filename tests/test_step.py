"""The compiled step: one graph, traced once (also across a padded last batch), same numbers as eager."""

import math

import optree
import pytest
import torch

import funcvae
from funcvae import compiling as C
from funcvae.batches import pad_rows
from funcvae.elbo import loss_and_grad


class CountingBackend:
    """A torch.compile backend that runs the captured graph as is and counts how often one is captured."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def small_data(n=300, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def test_the_step_is_traced_once_across_epochs_and_a_short_last_batch():
    backend = CountingBackend()
    torch._dynamo.reset()
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    # 300 = 2 * 128 + 44: every epoch ends with a padded batch; kl_warmup changes beta every step.
    funcvae.fit(params, small_data(), epochs=2, batch_size=128, kl_warmup=1, compile=backend)
    assert backend.graphs == 1


@pytest.mark.parametrize("matmul_dtype", [None, torch.bfloat16])
def test_compiled_and_eager_steps_give_the_same_numbers(matmul_dtype):
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    runs = [funcvae.fit(params, small_data(), val_data=small_data(50, 1), epochs=2, batch_size=128,
                        matmul_dtype=matmul_dtype, compile=c) for c in (False, "aot_eager")]
    (eager, h_eager), (compiled, h_compiled) = runs
    for path, t in funcvae.leaves_by_path(eager).items():
        torch.testing.assert_close(funcvae.leaves_by_path(compiled)[path], t, msg=path)
    for a, b in zip(h_eager, h_compiled):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)


def test_inductor_compiles_the_whole_step_on_cpu():
    if not C.has_cpp_compiler():
        pytest.skip("inductor needs a C++ compiler on CPU")
    params = funcvae.init(seed=0, hidden=(64,), latent=8)
    x = small_data()
    eager, _ = funcvae.fit(params, x, epochs=1, batch_size=100, compile=False)
    compiled, _ = funcvae.fit(params, x, epochs=1, batch_size=100, compile=True)
    for path, t in funcvae.leaves_by_path(eager).items():
        torch.testing.assert_close(funcvae.leaves_by_path(compiled)[path], t, rtol=1e-4, atol=1e-5, msg=path)


def test_a_padded_batch_gives_the_gradient_of_its_real_rows():
    params = funcvae.init(seed=1, hidden=(16,), latent=3)
    x, eps = small_data(5), torch.randn(5, 1, 3)
    real = loss_and_grad(params.tree, params.spec, x, eps, 1.0)
    w = pad_rows(torch.ones(5), 8)
    padded = loss_and_grad(params.tree, params.spec, pad_rows(x, 8), pad_rows(eps, 8), 1.0, w)
    for a, b in zip(optree.tree_leaves(real[0]), optree.tree_leaves(padded[0])):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(real[1][0], padded[1][0])


def test_without_a_cpp_compiler_fit_warns_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(C, "has_cpp_compiler", lambda: False)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        backend = C.compile_backend(None, torch.device("cpu"))
    assert backend is None
    assert C.compile_backend(False, torch.device("cpu")) is None
    assert C.compile_backend("aot_eager", torch.device("cpu")) == "aot_eager"


def test_a_gpu_step_is_replayed_as_a_cuda_graph():
    # CI has no GPU: what can be checked here is the choice made for one.
    assert C.compile_backend(None, torch.device("cuda")) == "inductor"
    assert C.compile_mode("inductor", torch.device("cuda")) == "reduce-overhead"
    assert C.compile_mode("inductor", torch.device("cpu")) is None
    assert C.compile_mode("aot_eager", torch.device("cuda")) is None


def test_the_bernoulli_term_in_softplus_form_equals_the_reference():
    logits = torch.linspace(-40, 40, 2001)
    x = torch.rand(2001, generator=torch.Generator().manual_seed(0))
    ref = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    assert float((funcvae.distributions.bernoulli_log_prob(logits, x) - ref).abs().max()) <= 1e-6 * max(
        1.0, float(ref.abs().max()))
    assert math.isfinite(float(funcvae.distributions.bernoulli_log_prob(logits, x).sum()))


def test_many_models_in_one_process_each_compile_once():
    # Dynamo allows 8 recompiles per code object; every step gets a code object of its own.
    backend = CountingBackend()
    x = small_data(64)
    for width in range(8, 20):
        funcvae.fit(funcvae.init(seed=0, hidden=(width,), latent=2), x, epochs=1, batch_size=32, compile=backend)
    assert backend.graphs == 12
