"""The GPU paths on a GPU: the compiled step replayed as a CUDA graph, no host syncs inside an epoch, params
that outlive the graph's next replay, bfloat16 products. Skipped without CUDA (each path also has a CPU test:
test_step.py, test_train.py)."""

import warnings

import pytest
import torch

import funcvae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMALL = dict(hidden=(64,), latent=8)


def data(n: int) -> torch.Tensor:
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(0))


def on_gpu(seed: int = 0) -> funcvae.Params:
    return funcvae.init(seed=seed, device="cuda", **SMALL)


def test_the_cuda_graph_step_equals_the_eager_step():
    eager, h_eager = funcvae.fit(on_gpu(), data(300), epochs=2, batch_size=128, compile=False)
    graphed, h_graphed = funcvae.fit(on_gpu(), data(300), epochs=2, batch_size=128)  # inductor, CUDA graphs
    for path, t in funcvae.leaves_by_path(eager).items():
        torch.testing.assert_close(funcvae.leaves_by_path(graphed)[path], t, rtol=1e-4, atol=1e-5, msg=path)
    assert [h["loss"] for h in h_graphed] == pytest.approx([h["loss"] for h in h_eager], rel=1e-5)


def synchronizations(n: int, batch_size: int) -> int:
    """Synchronising CUDA calls made by a fit of 2 epochs on n examples, its step compiled and recorded."""
    funcvae.fit(on_gpu(), data(n), epochs=1, batch_size=batch_size, progress=False)  # compile and record
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            funcvae.fit(on_gpu(), data(n), epochs=2, batch_size=batch_size, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_an_epoch_syncs_with_the_host_a_fixed_number_of_times_whatever_its_length():
    assert synchronizations(2 * 64, 64) == synchronizations(8 * 64, 64)


def test_params_from_fit_survive_a_later_fit_of_the_same_model():
    first, _ = funcvae.fit(on_gpu(), data(256), epochs=1, batch_size=64)
    kept = {path: t.cpu() for path, t in funcvae.leaves_by_path(first).items()}
    funcvae.fit(on_gpu(seed=1), data(256), epochs=1, batch_size=64)  # replays the same CUDA graph
    for path, t in funcvae.leaves_by_path(first).items():
        assert torch.equal(t.cpu(), kept[path]), path


def test_bfloat16_products_on_the_gpu_keep_float32_state_and_train():
    params = on_gpu()
    before = float(funcvae.elbo(params, data(256), seed=1)["loss"].mean())
    trained, history = funcvae.fit(params, data(256), epochs=3, batch_size=64, matmul_dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in funcvae.leaves_by_path(trained).values())
    assert float(funcvae.elbo(trained, data(256), seed=1)["loss"].mean()) < before
    assert history[-1]["loss"] < history[0]["loss"]
