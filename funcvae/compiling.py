"""When and how the training step is compiled: one graph (``fullgraph=True``), static shapes, inductor on
a GPU or where a C++ compiler can build CPU kernels, CUDA graphs on a GPU, the eager step otherwise."""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Callable

import torch


def make_step(step: Callable, device: torch.device, compile: bool | str | Callable | None) -> Callable:
    """``step`` as it will run: compiled as one graph (``fullgraph=True``) or eager.

    Args:
      compile: None compiles where it can (a GPU, or a C++ compiler for the CPU) and warns where it cannot;
        True insists (still falling back, with the warning, when no compiler exists); False runs eagerly;
        a backend name (e.g. "aot_eager") or a backend callable is passed to ``torch.compile``.
    """
    backend = compile_backend(compile, device)
    if backend is None:
        return step
    return torch.compile(step, backend=backend, mode=compile_mode(backend, device), fullgraph=True, dynamic=False)


def compile_mode(backend: str | Callable, device: torch.device) -> str | None:
    """"reduce-overhead" (the step captured and replayed as a CUDA graph: one launch per step, no host
    work between kernels) for inductor on a GPU; the default mode otherwise."""
    return "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None


def compile_backend(compile: bool | str | Callable | None, device: torch.device) -> str | Callable | None:
    """The ``torch.compile`` backend that ``make_step`` will use, or None for the eager step."""
    if compile is False:
        return None
    if compile is None or compile is True:
        if device.type == "cpu" and not has_cpp_compiler():
            warnings.warn("no C++ compiler found (set CXX or install g++): torch.compile cannot build CPU "
                          "kernels, so fit runs the eager step", RuntimeWarning, stacklevel=3)
            return None
        return "inductor"
    return compile


def has_cpp_compiler() -> bool:
    """Whether inductor can build CPU kernels here (it calls $CXX, else g++ / clang++)."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return any(shutil.which(name) for name in names)
