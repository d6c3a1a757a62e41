"""Which library multiplies the compiled CPU step's fp32 matrices.

PyTorch sends an fp32 matrix product on the CPU to MKL's sgemm. MKL picks its kernels by the processor's
vendor, and on AMD processors it does not use its AVX-512 kernels: on an AMD EPYC (Zen 4, AVX-512) the step's
products (batch 128, the MLP 784-400-20) ran 1.6-1.9x slower in MKL than in oneDNN, which PyTorch also
ships. On an Intel Xeon MKL was the faster of the two (oneDNN 0.5-1.06x its speed). So on a CPU whose
vendor is not Intel, the compiled step's fp32 products go to oneDNN: a graph pass that inductor runs after
autograd replaces each ``aten.mm`` with ``funcvae::onednn_mm``. The choice depends on the vendor alone, not
on a timing, so the same machine always computes the same bits.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor
from torch._inductor.custom_graph_pass import CustomGraphPass

_CPUINFO = Path("/proc/cpuinfo")
_LINEAR = torch.ops.mkldnn._linear_pointwise.default  # (X, W, bias, attr, scalars, algorithm) -> X W^T + bias


@torch.library.custom_op("funcvae::onednn_mm", mutates_args=())
def onednn_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` by oneDNN: a (M, K), b (K, N) fp32 CPU tensors of any strides -> (M, N)."""
    return _LINEAR(a, b.t(), None, "none", [], "")


@onednn_mm.register_fake
def _(a: Tensor, b: Tensor) -> Tensor:
    return a.new_empty((a.shape[0], b.shape[1]))


class OneDNNProducts(CustomGraphPass):
    """Inductor's post-grad pass: every fp32 CPU ``aten.mm`` of the graph becomes ``funcvae::onednn_mm``."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        for node in graph.find_nodes(op="call_function", target=torch.ops.aten.mm.default):
            value = node.meta["val"]
            if value.dtype != torch.float32 or value.device.type != "cpu":
                continue
            with graph.inserting_before(node):
                new = graph.call_function(torch.ops.funcvae.onednn_mm.default, node.args)
            new.meta.update(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)

    def uuid(self) -> str:
        return "funcvae-onednn-products-1"


def products_pass(device: torch.device) -> CustomGraphPass | None:
    """The pass a compiled step on ``device`` runs with (None: PyTorch's own choice, MKL)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available() or cpu_vendor() == "GenuineIntel":
        return None
    return OneDNNProducts()


@functools.cache
def cpu_vendor() -> str | None:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD", ...) from /proc/cpuinfo; None where unknown."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return None
