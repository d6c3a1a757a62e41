"""Which library multiplies the compiled CPU step's fp32 matrices.

PyTorch sends an fp32 matrix product on the CPU to MKL's sgemm. MKL picks its kernels by the processor's
vendor, and on AMD processors it does not use its AVX-512 kernels: on an AMD EPYC (Zen 4, AVX-512) the step's
products (batch 128, the MLP 784-400-20) ran 1.6-1.9x slower in MKL than in oneDNN, which PyTorch also
ships. On an Intel Xeon MKL was the faster of the two (oneDNN 0.5-1.06x its speed). So on a CPU whose
vendor is not Intel, the compiled step's fp32 products go to oneDNN: a graph pass that inductor runs after
autograd replaces each ``aten.mm`` with ``funcvae::onednn_mm``. The choice depends on the vendor alone, not
on a timing, so the same machine always computes the same bits.

MKL splits a product's reduction by its thread count on Intel CPUs, so a product's bits changed with it.
``reproducible_mkl`` puts MKL in its strict conditional numerical reproducibility mode, in which its
products give the same bits on any number of threads; it must be in force before MKL's first call, so
funcvae sets it when imported.
"""

from __future__ import annotations

import ctypes
import functools
import os
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


_CBWR_STRICT_AUTO = 0x10002  # MKL_CBWR_AUTO | MKL_CBWR_STRICT
_CBWR_ALL = -1  # MKL_CBWR_ALL: ask for the whole mode


def reproducible_mkl() -> bool:
    """Ask MKL for strict reproducibility (``MKL_CBWR=AUTO,STRICT``) unless the environment names a mode;
    whether the strict mode is in force. False where torch has no MKL, or MKL has already run in another
    mode (then a product's bits may depend on the thread count, and fit's thread check keeps the count)."""
    cbwr = _mkl_cbwr()
    if cbwr is None:
        return False
    get, set_ = cbwr
    if "MKL_CBWR" not in os.environ:
        set_(_CBWR_STRICT_AUTO)  # refused (and changes nothing) once MKL has run in another mode
    return get(_CBWR_ALL) & _CBWR_STRICT_AUTO == _CBWR_STRICT_AUTO


@functools.cache
def _mkl_cbwr() -> tuple | None:
    """MKL's (get, set) of its reproducibility mode, from the library torch links it into; None without."""
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    if not torch.backends.mkl.is_available() or not library.is_file():
        return None
    lib = ctypes.CDLL(str(library))
    for prefix in ("mkl_", "mkl_serv_"):
        get, set_ = (getattr(lib, f"{prefix}cbwr_{verb}", None) for verb in ("get", "set"))
        if get is not None and set_ is not None:
            for f in (get, set_):
                f.argtypes, f.restype = [ctypes.c_int], ctypes.c_int
            return get, set_
    return None


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
