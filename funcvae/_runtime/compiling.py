"""When and how the training step is compiled: one graph (``fullgraph=True``), static shapes, inductor on
a GPU or where a C++ compiler can build CPU kernels, CUDA graphs on a GPU, the eager step otherwise."""

from __future__ import annotations

import itertools
import logging
import os
import platform
import re
import shutil
import threading
import warnings
from functools import partial
from typing import Callable

import torch

from funcvae._moved import module_getattr
from funcvae._runtime.gemm import products_pass
from funcvae._runtime.memory import keep_freed_memory


def _not_the_cuda_runtime_note(record: logging.LogRecord) -> bool:
    """False for the compiler's note that a machine without a GPU has no CUDA runtime: compiling our step for
    the CPU raises it on every CPU-only machine, where it says nothing wrong and would garble a progress bar.
    Every other message of that logger passes."""
    return not record.getMessage().startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_not_the_cuda_runtime_note)


def compile_step(step: Callable, device: torch.device, compile: bool | str | Callable | None, *,
              key=None, cuda_graphs: bool = True) -> Callable:
    """``step`` as it will run: compiled as one graph (``fullgraph=True``) or eager.

    Args:
      compile: None compiles where it can (a GPU, or a C++ compiler for the CPU) and warns where it cannot;
        True insists (still falling back, with the warning, when no compiler exists); False runs eagerly;
        a backend name (e.g. "aot_eager") or a backend callable is passed to ``torch.compile``.
      key: hashable, what ``step`` computes: a later call with an equal key reuses the compiled step (default:
        the function and arguments of a ``functools.partial``; other steps are compiled afresh).
      cuda_graphs: replay the step as a CUDA graph on a GPU (``compile_mode``). A replay reuses its output
        buffers, so a function whose outputs the caller keeps must pass False.
    """
    backend = compile_backend(compile, device)
    if backend is None:
        if device.type == "cpu":
            keep_freed_memory()  # the eager step's blocks, made afresh each step, reused (memory.py)
        return step
    mode = compile_mode(backend, device) if cuda_graphs else None
    key = _key(step, backend, device, mode) if key is None else (key, backend, mode, device.type, device.index)
    if backend == "inductor" and device.type == "cpu":
        _prepare_cpu_builds()
    if key is None or key not in _COMPILED:
        compiled = _eager_if_untraceable(step, _scalars_stay_tensors(torch.compile(
            _with_own_code(step), backend=backend, mode=mode, fullgraph=True, dynamic=False,
            options=_options(backend, device))))
        if key is None:
            return compiled
        _COMPILED[key] = compiled
    return _COMPILED[key]


def _eager_if_untraceable(step: Callable, compiled: Callable) -> Callable:
    """``compiled``, or from the first call that dynamo cannot trace as one graph (a ``print`` in a model's
    function, say) on, ``step`` itself, with a RuntimeWarning naming the line. Dynamo refuses while tracing,
    before the step runs, so nothing has happened twice."""
    now = [compiled]

    def call(*args):
        try:
            return now[0](*args)
        except torch._dynamo.exc.Unsupported as e:
            if now[0] is step:
                raise
            now[0] = step
            warnings.warn(f"the step cannot be compiled as one graph ({_first_line(e)}{_user_line(e)}), so it runs "
                          "eagerly; code that torch.compile can trace (no print, no Python side effects) compiles",
                          RuntimeWarning, stacklevel=2)
            return step(*args)
    return call


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _user_line(e: Exception) -> str:
    """Where in the user's code dynamo stopped, as its message tells: ``; at FILE, line N``."""
    places = re.findall(r'File "([^"]+)", line (\d+)', str(e))
    return f"; at {places[-1][0]}, line {places[-1][1]}" if places else ""


def _with_own_code(step: Callable) -> Callable:
    """``step`` behind a function with a code object of its own. Dynamo keeps its compiled graphs, and its
    limit of 8 recompiles, per code object; ``torch.compile`` of a ``partial`` would share one wrapper's
    code among every step ever compiled, so the ninth model, batch size or optimiser in one process would
    fail to compile."""
    def call(*args):
        return step(*args)

    call.__code__ = call.__code__.replace(co_name=f"funcvae_step_{next(_COUNTER)}")
    return call


def _prepare_cpu_builds() -> None:
    """Start, in the background and once a process, the builds inductor makes before its first CPU kernel.

    With an empty compile cache, inductor first checks each vector instruction set the CPU lists (AVX-512 with
    VNNI, AVX-512, AVX2) by building and loading a test library, then precompiles the header that every
    kernel includes (158 MB; 6 s on 2 cores) in the thread that writes the kernels. Here the check of the set
    inductor will pick runs first and that header is built beside the other checks, all while dynamo traces
    the step. Inductor then finds its own results on disk, the same checks and the same header, so the
    kernels are the same (docs/speed.md, "A quicker cold start")."""
    global _PREPARING
    if _PREPARING is None:
        _PREPARING = threading.Thread(target=_quietly, args=(_check_and_build,), name="funcvae-cpu-builds",
                                      daemon=True)
        _PREPARING.start()


_PREPARING: threading.Thread | None = None


def _check_and_build() -> None:
    from torch._inductor import cpu_vec_isa

    first = _likely_isa()
    header = None
    if first:  # runs inductor's check of that set alone (it keeps the answer)
        header = threading.Thread(target=_quietly, args=(_precompile_header, first), daemon=True)
        header.start()
    cpu_vec_isa.valid_vec_isa_list()  # inductor's checks of the others
    if header is None:
        _precompile_header(cpu_vec_isa.pick_vec_isa())
    else:
        header.join()


def _likely_isa():
    """The instruction set inductor will pick when its checks pass: on an x86 CPU, the first of inductor's list
    whose flags the CPU lists; None where the choice is not that (another processor, or a set asked for)."""
    from torch._inductor import config, cpu_vec_isa

    if os.environ.get("ATEN_CPU_CAPABILITY") or config.cpp.simdlen is not None:
        return None
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    flags = cpu_vec_isa.x86_isa_checker()
    return next((isa for isa in cpu_vec_isa.supported_vec_isa_list
                 if all(flag in flags for flag in str(isa).split())), None)


def _precompile_header(isa) -> None:
    """Inductor's precompiled header for CPU kernels with ``isa``: the command line its kernels' builds use,
    so the file (named by a hash of that line and the header's text) is the one they look for."""
    from torch._inductor import codecache, cpp_builder

    cache = codecache.CppPythonBindingsCodeCache
    command = {**cache.cpp_compile_command_flags, "device_type": "cpu", "extra_flags": (),
               "use_relative_path": False, "vec_isa": isa}
    option = cpp_builder.CppTorchDeviceOptions(compile_only=False, min_optimize=False, **command)
    line = cpp_builder.CppBuilder(name="o", sources="i", BuildOption=option).get_command_line()
    codecache._precompile_header(cache._get_uncompiled_header("cpu"), line, min_optimize=False, **command)


def _quietly(fn: Callable, *args) -> None:
    """``fn(*args)``, a failure logged, not raised: these builds only save time, and inductor makes anything
    missing itself."""
    try:
        fn(*args)
    except Exception:
        logging.getLogger(__name__).debug("preparing inductor's CPU builds failed", exc_info=True)


def _options(backend, device: torch.device) -> dict | None:
    """Inductor's settings for the step: on a CPU, the matrix products' library (``funcvae._runtime.gemm``)."""
    products = products_pass(device) if backend == "inductor" else None
    return None if products is None else {"post_grad_custom_post_pass": products}


def _scalars_stay_tensors(compiled: Callable) -> Callable:
    """``compiled`` called with AOT autograd's pass that turns Python float scalars into tensors switched off.

    The step has no Python float inputs, but that pass would restart the whole trace for its 0-d float64
    numbers (docs/speed.md, "One trace per compile"). The switch is an environment variable read while
    compiling, so it is set for the call and restored after it."""
    def call(*args):
        before = os.environ.get(_TENSORIFY)
        os.environ[_TENSORIFY] = "0"
        try:
            return compiled(*args)
        finally:
            if before is None:
                del os.environ[_TENSORIFY]
            else:
                os.environ[_TENSORIFY] = before
    return call


_TENSORIFY = "TENSORIFY_PYTHON_SCALARS"

# Compiled steps by what they compute: a second fit with the same model, optimiser and device reuses the
# graph instead of tracing again (each new trace of the same function also counts towards dynamo's
# recompile limit, past which it silently runs eagerly).
_COMPILED: dict = {}
_COUNTER = itertools.count()


def clear() -> None:
    """Forget the compiled steps kept for reuse (after changing torch's compiler settings, say)."""
    _COMPILED.clear()


def _key(step: Callable, backend, device: torch.device, mode: str | None):
    """A hashable description of a ``functools.partial`` step, or None when it has none."""
    if not isinstance(step, partial):
        return None
    key = (step.func, step.args, tuple(sorted(step.keywords.items())), backend, mode, device.type, device.index)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def compile_mode(backend: str | Callable, device: torch.device) -> str | None:
    """"reduce-overhead" (the step captured and replayed as a CUDA graph: one launch per step, no host
    work between kernels) for inductor on a GPU; the default mode otherwise."""
    return "reduce-overhead" if backend == "inductor" and device.type == "cuda" else None


def compile_backend(compile: bool | str | Callable | None, device: torch.device) -> str | Callable | None:
    """The ``torch.compile`` backend that ``compile_step`` will use, or None for the eager step."""
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


__getattr__ = module_getattr(__name__, {"make_step": "funcvae._runtime.compiling:compile_step"})
