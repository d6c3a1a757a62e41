"""The compiled step: one graph, traced once (also across a padded last batch), same numbers as eager."""

import logging
import math

import optree
import pytest
import torch

import funcvae
from funcvae._runtime import compiling as C
from funcvae.batches import pad_rows
from funcvae import objectives, optim
from funcvae.step import Batch, init_state, make_train_step


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
    funcvae.fit(params, small_data(), epochs=2, batch_size=128, kl_warmup=1, compile=backend,
                share_cores=False)  # one thread count: a new count compiles its own graph
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
    objective, optimizer = objectives.elbo(), optim.adam(1e-3)
    step = make_train_step(params.model, objective, optimizer)
    state = init_state(params, objective, optimizer)
    real = step.gradients(state, Batch(x, eps, torch.ones(5)))
    w = pad_rows(torch.ones(5), 8)
    padded = step.gradients(state, Batch(pad_rows(x, 8), pad_rows(eps, 8), w))
    for a, b in zip(optree.tree_leaves(real[0]), optree.tree_leaves(padded[0])):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(real[1], padded[1])


def test_a_stack_is_the_vmap_of_the_one_step_for_any_optimiser():
    # Two models with different learning rates and momenta under ONE sgd update code, and different betas
    # under ONE objective code: the stacked step equals each model's own step.
    params = [funcvae.init(seed=s, hidden=(16,), latent=3) for s in (0, 1)]
    objs = [objectives.elbo(b) for b in (0.5, 2.0)]
    opts = [optim.chain(optim.clip_by_global_norm(c), optim.sgd(lr, momentum=m))
            for c, lr, m in ((1.0, 1e-2, 0.9), (5.0, 1e-3, 0.5))]
    steps = [make_train_step(p.model, o, t) for p, o, t in zip(params, objs, opts)]
    assert steps[0] == steps[1] and hash(steps[0]) == hash(steps[1])
    states = [init_state(p, o, t) for p, o, t in zip(params, objs, opts)]
    batches = [Batch(small_data(8, s), torch.randn(8, 1, 3), torch.ones(8)) for s in (0, 1)]
    for _ in range(3):  # momentum makes the second and third steps depend on the state
        singles = [step(state, batch) for step, state, batch in zip(steps, states, batches)]
        stacked_state = optree.tree_map(lambda *t: torch.stack(t), *states)
        stacked_batch = Batch(*(torch.stack(t) for t in zip(*(b[:3] for b in batches))))
        together, metrics = funcvae.step.stacked(steps[0])(stacked_state, stacked_batch)
        for m, (single, single_metrics) in enumerate(singles):
            for a, b in zip(optree.tree_leaves(single), optree.tree_leaves(optree.tree_map(lambda t: t[m], together))):
                torch.testing.assert_close(a, b)
            torch.testing.assert_close(single_metrics, metrics[m])
        states = [s for s, _ in singles]


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
    # Dynamo allows 8 recompiles per code object; every step gets a code object of its own, so a ninth model
    # compiles as the first did.
    backend = CountingBackend()
    x = small_data(64)
    for width in range(8, 17):
        funcvae.fit(funcvae.init(seed=0, hidden=(width,), latent=2), x, epochs=1, batch_size=32, compile=backend,
                    share_cores=False)  # one thread count: one graph per width
    assert backend.graphs == 9


def test_a_users_model_compiles_once_across_fits_learning_rates_and_betas():
    # The step's code is the model's and the pieces'; their numbers live in the state, so a second fit of the
    # same model with another lr or beta reuses the graph instead of tracing again.
    gen_sizes = (784, 16, 3)

    def init(gen):
        return {"enc": funcvae.nn.dense_init(gen, gen_sizes[0], gen_sizes[1]),
                "head": funcvae.nn.dense_init(gen, gen_sizes[1], 2 * gen_sizes[2]),
                "dec": funcvae.nn.dense_init(gen, gen_sizes[2], gen_sizes[0])}

    def encode(tree, x):
        return funcvae.nn.dense(tree["head"], torch.tanh(funcvae.nn.dense(tree["enc"], x))).chunk(2)

    def decode(tree, z):
        return funcvae.nn.dense(tree["dec"], z)

    model = funcvae.Model(init=init, encode=encode, decode=decode, input_shape=(1, 28, 28), latent=3)
    backend = CountingBackend()
    x = small_data(96)
    for lr, beta in ((1e-3, 1.0), (3e-3, 0.5), (1e-2, 2.0)):
        # One thread count throughout: a new count compiles its own graph.
        funcvae.fit(model.init(seed=0), x, epochs=2, batch_size=64, lr=lr, beta=beta, compile=backend,
                    share_cores=False)
    assert backend.graphs == 1


def test_a_stack_of_models_is_traced_once_whatever_their_learning_rates_and_betas():
    backend = CountingBackend()
    params = funcvae.stack([funcvae.init(seed=s, hidden=(16,), latent=3) for s in range(3)])
    funcvae.fit(params, small_data(), epochs=2, batch_size=128, lr=[1e-3, 3e-3, 1e-2], beta=[0.5, 1.0, 2.0],
                seed=[0, 1, 2], kl_warmup=1, compile=backend, share_cores=False)  # one thread count: one graph
    assert backend.graphs == 1


def test_the_cpu_only_machines_cuda_note_is_dropped_and_the_loggers_other_messages_pass():
    logger = logging.getLogger("torch.utils.cpp_extension")
    def record(message):
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)
    assert not logger.filter(record("No CUDA runtime is found, using CUDA_HOME='/usr/local'"))
    assert logger.filter(record("Error building extension 'x'"))


@pytest.mark.parametrize("compile, device, prepared", [(True, "cpu", True), ("aot_eager", "cpu", False),
                                                       (False, "cpu", False), (True, "meta", False)])
def test_inductor_on_a_cpu_prepares_its_builds_once_in_the_background(monkeypatch, compile, device, prepared):
    calls = []
    monkeypatch.setattr(C, "_PREPARING", None)
    monkeypatch.setattr(C, "has_cpp_compiler", lambda: True)
    monkeypatch.setattr(C, "_check_and_build", lambda: calls.append(1))
    for _ in range(2):  # a second step compiled in the process does not start them again
        C.compile_step(lambda x: x, torch.device(device), compile)
    if prepared:
        C._PREPARING.join(10)
    assert len(calls) == prepared and (C._PREPARING is not None) is prepared


@pytest.mark.skipif(not C.has_cpp_compiler(), reason="inductor needs a C++ compiler for CPU kernels")
def test_the_header_built_in_the_background_is_the_one_inductors_kernels_include(monkeypatch):
    """The header is named by a hash of its build's command line: the background build must ask for the same
    file inductor's kernels ask for, or a cold start builds it twice."""
    from torch._inductor import codecache, config, cpu_vec_isa
    asked = []
    real = codecache._precompile_header
    monkeypatch.setattr(codecache, "_precompile_header", lambda header, line, **kw: asked.append((header, line))
                        or real(header, line, **kw))
    C._precompile_header(cpu_vec_isa.pick_vec_isa())
    with config.patch(fx_graph_cache=False):
        torch.compile(lambda x: torch.sigmoid(x * 0.8125 + 3.0625), backend="inductor")(torch.randn(8))
    assert len(asked) >= 2 and set(asked[1:]) == {asked[0]}


def test_a_failed_background_build_is_logged_not_raised(caplog):
    def broken():
        raise AttributeError("inductor moved a private name")
    with caplog.at_level(logging.DEBUG, logger=C.__name__):
        C._quietly(broken)
    assert "inductor moved a private name" in caplog.text


def test_op_by_op_is_false_under_every_trace_and_transform():
    from torch.func import grad, vmap
    from funcvae._runtime.eager import op_by_op
    seen = [op_by_op()]
    vmap(lambda x: seen.append(op_by_op()) or x)(torch.ones(2))
    grad(lambda x: seen.append(op_by_op()) or x.sum())(torch.ones(2))
    torch.compile(lambda x: seen.append(op_by_op()) or x + 1, backend="eager", fullgraph=True)(torch.ones(2))
    with torch._subclasses.FakeTensorMode():
        seen.append(op_by_op())
    assert seen == [True, False, False, False, False]
