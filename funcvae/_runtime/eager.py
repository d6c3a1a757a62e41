"""Whether code runs as plain PyTorch, op by op: the test behind the eager step's fast paths.

The step is one pure function for every way it runs: traced by dynamo, under ``vmap`` (a stack of models),
or eagerly. Run eagerly, two of its parts have a faster form that gives the same bits (tested): the guard
picks its trees by reading its flag on a CPU, and the gradients come from ``torch.autograd.grad`` rather
than ``torch.func.grad``. Both may only be taken where nothing traces or transforms the ops.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def op_by_op() -> bool:
    """True outside dynamo's trace, outside every ``torch.func`` transform (``vmap``, ``grad``) and with no
    dispatch mode on (fake tensors, tracing)."""
    return (not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is None
            and _get_current_dispatch_mode() is None)
