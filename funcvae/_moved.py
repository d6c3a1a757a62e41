"""Names that moved or went in this release, kept for one release (listed in CHANGELOG.md)."""

from __future__ import annotations

import importlib
import warnings


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
        new = f"{path}.{attr}" if attr else path
        warnings.warn(f"{module}.{name} is now {new}; the old name goes in the next release", DeprecationWarning,
                      stacklevel=2)
        target = importlib.import_module(path)
        return getattr(target, attr) if attr else target
    return __getattr__
