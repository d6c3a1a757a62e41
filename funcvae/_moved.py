"""Names that moved or went in this release, kept for one release (listed in CHANGELOG.md)."""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: Old module paths and where their code lives now.
MODULES = {f"funcvae.{name}": f"funcvae._runtime.{name}"
           for name in ("compiling", "gemm", "threads", "distributed", "lock", "interrupt", "records")}
MODULES["funcvae.validate"] = "funcvae.inputs"
#: Old module paths that now name a function of the package: importing them would hide the function.
SHADOWED = {"funcvae.elbo": "funcvae.bounds", "funcvae.stack": "funcvae.stacks"}


def warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old name goes in the next release", DeprecationWarning, stacklevel=3)


def module_getattr(module: str, aliases: dict[str, str], removed: dict[str, str] | None = None):
    """A module ``__getattr__`` for ``module``: an old name of ``aliases`` (old -> "package.module" or
    "package.module:attr") returns what it names now, with a DeprecationWarning; a name of ``removed`` raises
    AttributeError with its message (what to use instead)."""
    removed = removed or {}

    def __getattr__(name: str):
        if name in removed:
            raise AttributeError(f"{module}.{name} was removed: {removed[name]}")
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        path, _, attr = aliases[name].partition(":")
        warn(f"{module}.{name}", f"{path}.{attr}" if attr else path)
        target = importlib.import_module(path)
        return getattr(target, attr) if attr else target
    return __getattr__


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import funcvae.threads`` (an old path of ``MODULES``) gives the module that lives on, with a
    DeprecationWarning; an old path of ``SHADOWED`` is an ImportError that names the new one."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in SHADOWED:
            raise ImportError(f"the module {fullname} is now {SHADOWED[fullname]} ({fullname} is the function)")
        if fullname in MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warn(spec.name, MODULES[spec.name])
        module = importlib.import_module(MODULES[spec.name])
        spec.loader_state = module.__spec__  # the import system sets the module's spec to this alias's
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Serve the old module paths (once per process)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())


def renamed_keyword(old: str, new: str):
    """A decorator: ``old=`` still passes ``new=`` to the function, with a DeprecationWarning."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old}= and {new}=; {old} is the old name of {new}")
                warn(f"{fn.__name__}({old}=...)", f"{fn.__name__}({new}=...)")
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return wrap
