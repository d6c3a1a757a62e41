"""The compiled CPU step's products: oneDNN's product is a correct matrix product for any strides, the graph
pass swaps every fp32 ``aten.mm`` for it, the choice follows the CPU's vendor, and the step's compile does not
restart its trace over its 0-d float64 numbers."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from funcvae._runtime import compiling, gemm

ROOT = Path(__file__).resolve().parents[1]
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def _operand(rows: int, cols: int, transposed: bool, g: torch.Generator) -> torch.Tensor:
    """A (rows, cols) float32 matrix, stored transposed (column-major strides) when asked."""
    if transposed:
        return torch.randn(cols, rows, generator=g).t()
    return torch.randn(rows, cols, generator=g)


def _product_bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rounding error bound of a float32 product computed in any order: K eps |a| |b| per entry."""
    return a.shape[1] * torch.finfo(torch.float32).eps * (a.abs().double() @ b.abs().double())


@needs_onednn
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70), ta=st.booleans(), tb=st.booleans(),
       seed=st.integers(0, 2**16))
def test_onednn_product_is_the_matrix_product(m, k, n, ta, tb, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = _operand(m, k, ta, g), _operand(k, n, tb, g)
    out = gemm.onednn_mm(a, b)
    exact = a.double() @ b.double()
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert ((out.double() - exact).abs() <= _product_bound(a, b)).all()


def _mm_graph():
    return make_fx(lambda a, b, c: torch.relu(a @ b) @ c, tracing_mode="fake")(
        torch.randn(8, 5), torch.randn(5, 6), torch.randn(6, 3))


@needs_onednn
def test_the_pass_swaps_every_fp32_product_and_keeps_the_values():
    gm = _mm_graph()
    gemm.OneDNNProducts()(gm.graph)
    gm.recompile()
    targets = [node.target for node in gm.graph.nodes if node.op == "call_function"]
    assert torch.ops.aten.mm.default not in targets
    assert targets.count(torch.ops.funcvae.onednn_mm.default) == 2
    a, b, c = torch.randn(8, 5), torch.randn(5, 6), torch.randn(6, 3)
    assert torch.equal(gm(a, b, c), gemm.onednn_mm(torch.relu(gemm.onednn_mm(a, b)), c))


def test_the_pass_leaves_other_dtypes_alone():
    gm = make_fx(lambda a, b: a @ b, tracing_mode="fake")(torch.randn(4, 3, dtype=torch.float64),
                                                           torch.randn(3, 2, dtype=torch.float64))
    gemm.OneDNNProducts()(gm.graph)
    assert any(node.target is torch.ops.aten.mm.default for node in gm.graph.nodes)


@pytest.mark.parametrize("vendor, swapped", [("GenuineIntel", False), ("AuthenticAMD", True), (None, True)])
def test_the_choice_follows_the_vendor(monkeypatch, tmp_path, vendor, swapped):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + (f"vendor_id\t: {vendor}\n" if vendor else "") + "flags\t\t: fpu avx512f\n")
    monkeypatch.setattr(gemm, "_CPUINFO", info)
    gemm.cpu_vendor.cache_clear()
    try:
        assert gemm.cpu_vendor() == vendor
        chosen = gemm.products_pass(torch.device("cpu"))
        assert (chosen is not None) == (swapped and torch.backends.mkldnn.is_available())
        assert gemm.products_pass(torch.device("cuda")) is None
    finally:
        gemm.cpu_vendor.cache_clear()


def test_no_cpuinfo_means_an_unknown_vendor(monkeypatch, tmp_path):
    monkeypatch.setattr(gemm, "_CPUINFO", tmp_path / "absent")
    gemm.cpu_vendor.cache_clear()
    try:
        assert gemm.cpu_vendor() is None
    finally:
        gemm.cpu_vendor.cache_clear()


@needs_onednn
@pytest.mark.skipif(not compiling.has_cpp_compiler(), reason="inductor needs a C++ compiler on the CPU")
def test_inductor_runs_the_swapped_products():
    def f(a, b, c):
        return torch.relu(a @ b) @ c
    compiled = torch.compile(f, fullgraph=True, options={"post_grad_custom_post_pass": gemm.OneDNNProducts()})
    a, b, c = torch.randn(16, 24), torch.randn(24, 8).t().contiguous().t(), torch.randn(8, 4)
    assert torch.equal(compiled(a, b, c), gemm.onednn_mm(torch.relu(gemm.onednn_mm(a, b)), c))


_RESTARTS = textwrap.dedent("""
    import json, os, sys, torch
    from torch._dynamo.backends.common import aot_autograd
    from functorch.compile import make_boxed_func
    from funcvae._runtime.compiling import compile_step

    traces = []

    def backend(gm, inputs):
        traces.append(1)
        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, inputs)

    def update(lr, w):
        return w - lr.to(w.dtype) * w

    args = torch.tensor(0.1, dtype=torch.float64), torch.ones(3)
    step = compile_step(update, torch.device("cpu"), backend) if sys.argv[1] == "ours" else torch.compile(
        update, backend=backend, fullgraph=True)
    out = step(*args)
    print(json.dumps({"traces": len(traces), "env": os.environ.get("TENSORIFY_PYTHON_SCALARS"),
                      "right": bool(torch.equal(out, update(*args)))}))
""")


def _traces(which: str) -> dict:
    import json
    env = {k: v for k, v in os.environ.items() if k != "TENSORIFY_PYTHON_SCALARS"}
    out = subprocess.run([sys.executable, "-c", _RESTARTS, which], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_step_with_0d_float64_numbers_is_traced_once():
    # Fresh processes: dynamo remembers across compiles which scalars it has specialised.
    # (PyTorch 2.14 traces the plain compile twice; where a later one does not, both are 1.)
    plain, ours = _traces("plain"), _traces("ours")
    assert ours == {"traces": 1, "env": None, "right": True}
    assert plain["traces"] >= 1 and plain["right"]
