"""The model a run trains: a built-in one from the options, or a ``funcvae.Model`` of the user's own from
``--model FILE.py:NAME``; what config.json records of it, and the model of a run folder loaded again."""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path

import funcvae
from funcvae.cli.folder import RunError
from funcvae.contract import structure

#: The options that describe a built-in model (refused with --model, whose file says all that).
BUILT_IN = ("arch", "hidden", "latent", "activation", "likelihood", "obs_std", "prior", "pseudo_inputs", "latents",
            "posterior", "flow_steps", "context")


def model_of(args, input_shape: tuple[int, int, int] | None = None) -> tuple[funcvae.Model, dict]:
    """The model of the options and what config.json records of it: ``{"model": the built-in ModelSpec as a
    dict, "model_file": None}`` or ``{"model": None, "model_file": "/abs/FILE.py:NAME"}``. A built-in model takes
    ``input_shape`` (C, H, W), the shape of the data it will train on, when given (``--data``)."""
    given = [f"--{name.replace('_', '-')}" for name in BUILT_IN if getattr(args, name) is not None]
    if args.model is not None:
        if given:
            args.parser.error(f"--model takes the architecture, likelihood and prior from its file; {', '.join(given)} "
                              "(options of the built-in models) cannot be used with it")
        return _loaded(args, args.model, "--model "), {"model": None, "model_file": absolute(args.model)}
    fields = {name: getattr(args, name) for name in BUILT_IN if getattr(args, name) is not None}
    if "pseudo_inputs" in fields and fields.get("prior") != "vamp":
        args.parser.error("--pseudo-inputs applies to --prior vamp only")
    if "flow_steps" in fields and fields.get("posterior") != "iaf":
        args.parser.error("--flow-steps applies to --posterior iaf only")
    if input_shape is not None:
        fields["input_shape"] = tuple(input_shape)
    if fields.get("arch") == "ladder":
        fields.setdefault("hidden", (512, 256))
        fields.setdefault("latents", (64, 32))
    try:
        spec = funcvae.ModelSpec(**fields)
    except ValueError as e:
        args.parser.error(str(e))
    return funcvae.models.from_spec(spec), {"model": spec.to_dict(), "model_file": None}


def recorded_model(args, config: dict, path: Path) -> funcvae.Model:
    """The model that ``config``, read from the run folder's config.json at ``path``, records: the user's file
    loaded again (a usage error if it is gone), or the built-in spec (RunError if it describes none)."""
    if config["model_file"]:
        return _loaded(args, config["model_file"], "the run's model file ")
    try:
        return funcvae.models.from_spec(funcvae.ModelSpec.from_dict(config["model"]))
    except (TypeError, ValueError) as e:  # an unknown or missing field, a value ModelSpec refuses
        raise RunError(f"{path}: model does not describe a built-in model ({e})") from None


def _loaded(args, reference: str, what: str) -> funcvae.Model:
    """``model_from_file``, the model checked; what is wrong with either as a usage error (its one line, exit 2)
    that says ``what`` named the file."""
    try:
        model = model_from_file(reference)
    except ValueError as e:
        args.parser.error(f"{what}{e}")
    try:
        structure(model)  # the model's check, before any data are loaded or a folder made
    except Exception as e:  # noqa: BLE001 - the user's own code may raise anything: one line, not a traceback
        args.parser.error(f"{what}{reference}: the model fails its check: {type(e).__name__}: {e}")
    return model


def model_from_file(reference: str) -> funcvae.Model:
    """The ``funcvae.Model`` named by ``"FILE.py:NAME"``: the file is run as a module (under ``__name__``
    ``funcvae_model_<file stem>``, so its functions keep the same names from run to run) and its attribute
    NAME taken. Raises ValueError naming what is missing."""
    path, sep, name = reference.rpartition(":")
    if not (sep and path and name.isidentifier()):
        raise ValueError(f"{reference!r} is not FILE.py:NAME (e.g. my_vae.py:model)")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{reference}: there is no file {file}")
    module_name = "funcvae_model_" + re.sub(r"\W", "_", file.stem)
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None:
        raise ValueError(f"{reference}: {file} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # what dataclasses and pickle look a class's module up in
    sys.path.insert(0, str(file.resolve().parent))  # as for a script: a module beside it imports, from any folder
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[module_name]
        raise ValueError(f"{reference}: running {file} failed: {_why(e, file)}") from None
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        raise ValueError(f"{reference}: {file} defines no {name!r}")
    model = getattr(module, name)
    if not isinstance(model, funcvae.Model):
        raise ValueError(f"{reference}: {name} must be a funcvae.Model, not {type(model).__name__}")
    return model


def _why(e: BaseException, file: Path) -> str:
    """One line on why a model file could not run, with its line number where the error has one."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    if isinstance(e, SyntaxError):
        return f"SyntaxError at line {e.lineno}: {e.msg}"
    if isinstance(e, ImportError) and "relative import" in str(e):
        return (f"{e}; a model file is run on its own, not as part of a package: import a module beside it by "
                "its name (import helpers), which works from any folder")
    mine = str(file.resolve())
    line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == mine), None)
    return f"{type(e).__name__}: {e}" + (f" (line {line})" if line else "")


def model_name(model: funcvae.Model, config: dict) -> str:
    """A run folder's name for the model: the built-in's architecture, or the stem of the user's file."""
    if model.spec is not None:
        return model.spec.arch
    return re.sub(r"[^\w.-]", "_", Path(config["model_file"].rpartition(":")[0]).stem)


def absolute(reference: str) -> str:
    """``FILE.py:NAME`` with FILE made an absolute path (what config.json records)."""
    path, sep, name = reference.rpartition(":")
    return f"{Path(path).resolve()}{sep}{name}" if sep and path else reference
