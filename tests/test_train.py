"""fit on real Fashion-MNIST subsets: it learns, it is deterministic, it is pure, its options do what they say."""

import math

import optree
import pytest
import torch

import funcvae

EAGER = dict(compile=False)  # the compiled step has tests of its own (test_step.py)
KEYS = {"epoch", "recon", "kl", "loss", "val_recon", "val_kl", "val_loss", "beta", "skipped", "seconds"}


def test_fit_lowers_the_held_out_loss(fashion):
    train, test = fashion
    params = funcvae.init(seed=0)
    before = funcvae.elbo(params, test, seed=1)["loss"]
    trained, history = funcvae.fit(params, train, epochs=3, val_data=test, seed=0, **EAGER)
    after = funcvae.elbo(trained, test, seed=1)["loss"]
    # Paired per-example differences: the mean drop must exceed 5 standard errors of itself.
    drop = before - after
    assert float(drop.mean()) > 5 * float(drop.std() / math.sqrt(len(drop)))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(set(h) == KEYS for h in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["val_loss"] == pytest.approx(history[-1]["val_recon"] + history[-1]["val_kl"])


def test_same_seed_gives_identical_params_and_history(fashion):
    train, test = fashion
    runs = [funcvae.fit(funcvae.init(seed=0), train[:600], epochs=2, val_data=test[:200], seed=s, **EAGER)
            for s in (5, 5, 6)]
    (a, ha), (b, hb), (c, _) = runs
    for k, t in funcvae.leaves_by_path(a).items():
        assert torch.equal(t, funcvae.leaves_by_path(b)[k]), k
    assert not torch.equal(a.tree["decoder"]["out"]["kernel"], c.tree["decoder"]["out"]["kernel"])
    def without_seconds(history):
        return [{k: v for k, v in record.items() if k != "seconds"} for record in history]

    assert without_seconds(ha) == without_seconds(hb)


def test_fit_does_not_touch_its_inputs(fashion):
    train, _ = fashion
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    data = train[:256].clone()
    before = [t.clone() for t in optree.tree_leaves(params.tree)]
    trained, _ = funcvae.fit(params, data, epochs=1, batch_size=64, **EAGER)
    assert all(torch.equal(a, b) for a, b in zip(before, optree.tree_leaves(params.tree)))
    assert torch.equal(data, train[:256])
    assert not torch.equal(trained.tree["encoder"]["mean"]["bias"], params.tree["encoder"]["mean"]["bias"])


def test_without_val_data_the_val_keys_are_none(fashion):
    train, _ = fashion
    _, history = funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:300], epochs=1, batch_size=128, **EAGER)
    assert history[0]["val_recon"] is None and history[0]["val_kl"] is None and history[0]["val_loss"] is None


def test_kl_warmup_raises_beta_linearly_to_its_target(fashion):
    train, _ = fashion
    _, history = funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:512], epochs=4, batch_size=128,
                             beta=2.0, kl_warmup=2, **EAGER)
    assert [h["beta"] for h in history] == [1.0, 2.0, 2.0, 2.0]
    for h in history:  # the reported loss uses the target beta, so epochs stay comparable
        assert h["loss"] == pytest.approx(h["recon"] + 2.0 * h["kl"])


def test_dynamic_binarisation_is_seeded_and_changes_the_data_seen(fashion):
    train, test = fashion
    runs = [funcvae.fit(funcvae.init(seed=0, hidden=(32,)), train[:512], epochs=1, val_data=test[:100], seed=0,
                        binarize=b, **EAGER)[1][0] for b in ("dynamic", "dynamic", None)]
    assert runs[0]["val_loss"] == runs[1]["val_loss"] and runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["loss"] != runs[2]["loss"]


@pytest.mark.parametrize("model", [
    dict(arch="conv", channels=(8, 16), hidden=(64,), latent=8),
    dict(hidden=(128,), latent=8, likelihood="gaussian"),
    dict(hidden=(128,), latent=8, likelihood="gaussian", obs_std=0.2),
])
def test_every_architecture_and_likelihood_learns(fashion, model):
    train, test = fashion
    params = funcvae.init(seed=0, **model)
    before = funcvae.elbo(params, test[:300], seed=1)["loss"]
    trained, _ = funcvae.fit(params, train[:1024], epochs=2, batch_size=64, seed=0, **EAGER)
    drop = before - funcvae.elbo(trained, test[:300], seed=1)["loss"]
    assert float(drop.mean()) > 5 * float(drop.std() / math.sqrt(len(drop)))


class DeviceReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor methods that read a value back to the host (on a GPU each waits for the device)."""

    READS = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", None) in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("on_nonfinite", ["raise", "skip"])
@pytest.mark.parametrize("stacked", [False, True])
def test_an_epoch_reads_the_device_a_fixed_number_of_times_whatever_its_length(monkeypatch, on_nonfinite,
                                                                                stacked):
    # What a GPU needs to run an epoch without waiting on the host: no read per step (the compiled step
    # itself is one graph, so the eager step stands for it here). The guard selects on the device as it
    # does on a GPU: on a CPU it reads its flag each step, which costs nothing there.
    monkeypatch.setattr(funcvae.optim, "_on_host", lambda flag: False)
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    params = funcvae.stack([params, params]) if stacked else params
    x = torch.rand(240, 784, generator=torch.Generator().manual_seed(0))
    reads = []
    for batch_size in (120, 30):  # 2 and 8 steps per epoch
        with DeviceReads() as counter:
            funcvae.fit(params, x, epochs=2, batch_size=batch_size, kl_warmup=1, on_nonfinite=on_nonfinite,
                        seed=[0, 1] if stacked else 0, compile=False, progress=False)
        reads.append(counter.count)
    assert reads[0] == reads[1]


def test_bfloat16_products_give_float32_gradients_close_to_the_float32_ones():
    from funcvae.step import Batch, init_state, make_train_step

    params = funcvae.init(seed=0)
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.rand(128, 784, generator=gen).bernoulli(generator=gen), torch.randn(128, 1, 20, generator=gen)
    objective, optimizer = funcvae.objectives.elbo(), funcvae.optim.adam(1e-3)
    state, batch = init_state(params, objective, optimizer), Batch(x, eps, torch.ones(128))
    exact, exact_stats = make_train_step(params.model, objective, optimizer).gradients(state, batch)
    mixed, mixed_stats = make_train_step(params.model, objective, optimizer,
                                         matmul_dtype=torch.bfloat16).gradients(state, batch)
    # bfloat16 keeps 8 significant bits (unit roundoff u = 2^-9); a gradient here passes through up to 8
    # rounded products (4 layers, forward and back), each adding a few u of relative error: allow 64 u in
    # norm per leaf (3% measured at the worst leaf).
    u = 2.0 ** -9
    for path, a, b in zip(optree.tree_paths(exact), optree.tree_leaves(exact), optree.tree_leaves(mixed)):
        assert b.dtype == torch.float32, path
        assert float((a - b).norm() / a.norm()) < 64 * u, path
    # The batch sums of the terms are float32 arithmetic on the rounded network outputs.
    torch.testing.assert_close(mixed_stats, exact_stats, rtol=8 * u, atol=0)


def test_bfloat16_products_train_as_well_as_float32(fashion):
    train, test = fashion

    def held_out(seed, matmul_dtype):
        params, _ = funcvae.fit(funcvae.init(seed=seed), train, epochs=3, seed=seed, matmul_dtype=matmul_dtype,
                                **EAGER)
        return float(funcvae.elbo(params, test, seed=7)["loss"].mean())

    exact, mixed, other_seed = held_out(0, None), held_out(0, "bfloat16"), held_out(1, None)
    # Rounding the products must move the result less than the run-to-run spread that a seed gives.
    assert abs(mixed - exact) < abs(other_seed - exact) / 2


@pytest.mark.parametrize("kind", ["stack", "clip_norm"])
def test_every_step_kind_takes_bfloat16_products_and_keeps_float32_state(kind, tmp_path):
    params = funcvae.init(seed=0, hidden=(16,), latent=3)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    options = dict(seed=[0, 1]) if kind == "stack" else dict(clip_norm=1.0, noise_multiplier=0.5)
    start = funcvae.stack([params, params]) if kind == "stack" else params
    trained, _ = funcvae.fit(start, x, epochs=1, batch_size=32, matmul_dtype=torch.bfloat16, checkpoint_dir=tmp_path,
                             **options, **EAGER)
    state = funcvae.load(tmp_path / "checkpoint.safetensors")
    moments = [t for path, t in state.train.opt_state.items() if "/mu/" in path or "/nu/" in path]
    leaves = [*optree.tree_leaves(trained.tree), *moments]
    assert len(moments) >= 2 * len(optree.tree_leaves(trained.tree))
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in leaves)
    assert state.config["matmul_dtype"] == "bfloat16"


@pytest.mark.parametrize("bad", [torch.float16, "bf16", torch.int8])
def test_an_unsupported_matmul_dtype_is_refused_before_any_work(bad):
    with pytest.raises(ValueError, match="matmul_dtype must be None or one of"):
        funcvae.fit(funcvae.init(seed=0, hidden=(8,), latent=2), torch.rand(10, 784), epochs=1, batch_size=5,
                    matmul_dtype=bad, **EAGER)


def _graph_as_is(gm, inputs):
    """A compile backend that runs dynamo's graph as captured: guards and caching without a compiler's cost."""
    return gm.forward


@pytest.mark.parametrize("compile, skips", [(_graph_as_is, 2), (False, 0)])
def test_guards_are_skipped_after_each_epochs_second_step_only_when_compiled(monkeypatch, compile, skips):
    stances, real = [], torch.compiler.set_stance

    def recorded(*args, **kwargs):
        stances.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.compiler, "set_stance", recorded)
    x = torch.rand(96, 784, generator=torch.Generator().manual_seed(0))
    funcvae.fit(funcvae.init(seed=0, hidden=(8,), latent=2), x, epochs=2, batch_size=32, compile=compile,
                progress=False, share_cores=False)  # no change of thread count (which re-checks the guards)
    assert stances == [{"skip_guard_eval_unsafe": True}] * skips
    assert not torch._dynamo.eval_frame._stance.skip_guard_eval_unsafe  # left as it was


def test_a_later_fit_of_other_shapes_gets_its_own_graph_despite_skipped_guards():
    # The compiled step is kept for reuse across fits; a fit with another batch size must recompile at its
    # first step (whose guards are checked), not run the earlier fit's graph.
    from funcvae._runtime import compiling
    params = funcvae.init(seed=0, hidden=(8,), latent=2)
    x = torch.rand(96, 784, generator=torch.Generator().manual_seed(0))

    def run(batch_size):
        return funcvae.fit(params, x, epochs=2, batch_size=batch_size, seed=0, compile=_graph_as_is, progress=False)
    run(32)
    after, h_after = run(16)
    torch._dynamo.reset()
    compiling.clear()
    alone, h_alone = run(16)
    assert all(torch.equal(a, b) for a, b in zip(optree.tree_leaves(after.tree), optree.tree_leaves(alone.tree)))
    assert [h["loss"] for h in h_after] == [h["loss"] for h in h_alone]
