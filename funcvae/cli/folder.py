"""What the files of a run folder must hold, read and checked: config.json (the settings train recorded),
history.jsonl (one record per epoch), params.safetensors and checkpoint.safetensors. Whatever is wrong with
one is a ``RunError`` that names the file and the field or line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

import funcvae
from funcvae._runtime import records
from funcvae.cli.options import LEGACY_FIT
from funcvae.shorthand import OBJECTIVES, OPTIMIZERS
from funcvae.contract import stack_size

CONFIG, HISTORY, PARAMS = "config.json", "history.jsonl", "params.safetensors"


class RunError(Exception):
    """A run folder that cannot be used as it is (a garbage file, files of different runs) or a run that cannot
    go on: the CLI prints it as one line and exits 2. Not a usage error: the options are fine, the folder (or
    what it asks for) is not."""


class Kind(NamedTuple):
    """What a JSON value may be: ``test`` says whether it is, ``text`` says it in a message."""

    test: Callable[[object], bool]
    text: str


ACCEPT_HELP = ("read a run of a model file whose functions or code changed since the run was written (refused "
               "by default: other code may read the params as something else)")

def at_least(minimum: int) -> Kind:
    return Kind(lambda v: type(v) is int and v >= minimum, f"an int >= {minimum}")


def one_of(*values) -> Kind:
    """One of ``values`` (strings, or None, True, False: matched as themselves, so 1 is not True)."""
    return Kind(lambda v: any(v == c if isinstance(c, str) else v is c for c in values),
                "one of " + ", ".join(map(json.dumps, values)))


def or_null(kind: Kind) -> Kind:
    return Kind(lambda v: v is None or kind.test(v), f"{kind.text} or null")


NUMBER = Kind(lambda v: type(v) in (int, float), "a number")
OBJECT = Kind(lambda v: isinstance(v, dict), "an object")
STRING = Kind(lambda v: isinstance(v, str), "a string")
#: config.json as train writes it (model_file: absent in runs made before models of one's own; data: absent in
#: runs made before --data, null in runs of a data set).
TOP = dict(dataset=one_of(*funcvae.data.DATASETS, None), binarize=one_of(None, "static", "dynamic"),
           model=or_null(OBJECT), model_file=or_null(STRING), data=or_null(OBJECT), fit=OBJECT)
#: config.json's record of each file of a --data run (``own_data.record``).
DATA_FILE = dict(path=STRING, shape=Kind(lambda v: isinstance(v, list) and all(type(n) is int for n in v),
                                         "a list of ints"), dtype=STRING, sha256=STRING)
#: config.json's "fit", every setting train writes; ranges of the floats are the library's to check (on resume).
FIT = dict(epochs=at_least(1), batch_size=at_least(1), seed=at_least(0), binarize=one_of(None, "dynamic"),
           compile=one_of(None, True, False), checkpoint_every=or_null(at_least(1)),
           on_nonfinite=one_of("raise", "skip"), matmul_dtype=one_of(None, "bfloat16"), objective=one_of(*OBJECTIVES),
           k=or_null(at_least(1)), beta=or_null(NUMBER), kl_warmup=or_null(NUMBER), free_bits=or_null(NUMBER),
           optimizer=one_of(*OPTIMIZERS), lr=NUMBER, momentum=or_null(NUMBER), weight_decay=or_null(NUMBER))
#: The settings of config.json's "fit" that only some objectives record (absent for the others).
FIT_OWN = dict(mmd_weight=NUMBER)
#: What eval, its pictures and train's table read of an epoch's record (others may be there too).
RECORD = dict(epoch=at_least(1), recon=NUMBER, kl=NUMBER, loss=NUMBER, val_recon=or_null(NUMBER),
              val_kl=or_null(NUMBER), val_loss=or_null(NUMBER), seconds=NUMBER)


def read_config(run_dir: Path) -> dict:
    """config.json, checked against ``TOP`` and ``FIT``; a run made before some settings existed gets what they
    meant then (``LEGACY_FIT``, no model file). A setting train does not write is refused rather than ignored:
    it would be a typo, or a ``FitConfig`` field such as ``resume`` that the CLI sets itself."""
    path = run_dir / CONFIG
    try:
        config = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise RunError(f"{path} is not JSON ({e})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path} must hold a JSON object, not {type(config).__name__}")
    config = {"model_file": None, "data": None, **config}
    _check(config, TOP, f"{path}: ")
    _check_data(config, path)
    fit = {**LEGACY_FIT, **config["fit"]}
    unknown = sorted(fit.keys() - FIT.keys() - FIT_OWN.keys())
    if unknown:
        raise RunError(f"{path}: fit has settings train does not write: {', '.join(unknown)}")
    _check(fit, {**FIT, **{k: kind for k, kind in FIT_OWN.items() if k in fit}}, f"{path}: fit.")
    if config["model"] is None and config["model_file"] is None:
        raise RunError(f"{path}: no model (model and model_file are both null)")
    if fit["binarize"] != ("dynamic" if config["binarize"] == "dynamic" else None):
        raise RunError(f"{path}: binarize {config['binarize']!r} and fit.binarize {fit['binarize']!r} disagree")
    return {**config, "fit": fit}


def _check_data(config: dict, path: Path) -> None:
    """RunError unless config.json names exactly one of a data set and --data files (``DATA_FILE`` each)."""
    data = config["data"]
    if (config["dataset"] is None) == (data is None):
        raise RunError(f"{path}: exactly one of dataset and data must be set, got dataset {config['dataset']!r} and "
                       f"data {_short(data)}")
    if data is None:
        return
    _check(data, dict(train=OBJECT, val=or_null(OBJECT)), f"{path}: data.")
    for split in ("train", "val"):
        if data[split] is not None:
            _check(data[split], DATA_FILE, f"{path}: data.{split}.")


def write_config(run_dir: Path, config: dict) -> None:
    (run_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def read_history(path: Path) -> list[dict]:
    """history.jsonl's records, each checked (``check_record``); none without the file; blank lines skipped."""
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().decode().splitlines()
    except UnicodeDecodeError as e:
        raise RunError(f"{path} is not text ({e})") from None
    history = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = records.loads(line)
        except ValueError as e:
            raise RunError(f"{path} line {number} is not JSON ({e})") from None
        history.append(check_record(record, len(history) + 1, f"{path} line {number}"))
    return history


def check_record(record, epoch: int, where: str) -> dict:
    """``record`` if it is epoch ``epoch``'s record with the fields of ``RECORD``; else RunError."""
    if not isinstance(record, dict):
        raise RunError(f"{where}: an epoch's record must be a JSON object, not {type(record).__name__}")
    _check(record, RECORD, f"{where}: ")
    if record["epoch"] != epoch:
        raise RunError(f"{where}: epoch {record['epoch']}, expected {epoch} (the epochs in order from 1)")
    return record


def read_params(path: Path, model: funcvae.Model, accept_changed_code: bool = False) -> funcvae.Params:
    """One model's params from ``path``, which must be params of ``model`` (the model config.json records)."""
    try:
        params = funcvae.load_params(path, model=model, accept_changed_code=accept_changed_code)
    except ValueError as e:  # the message names the file
        raise RunError(str(e)) from None
    n = stack_size(params)
    if n is not None:
        raise RunError(f"{path} holds a stack of {n} models, not one model's params")
    return params


def read_checkpoint(path: Path, model: funcvae.Model, accept_changed_code: bool = False
                    ) -> tuple[funcvae.Checkpoint, list[dict]]:
    """The checkpoint at ``path`` (of ``model``) and its one model's history, each record checked."""
    try:
        checkpoint = funcvae.load(path, model=model, accept_changed_code=accept_changed_code)
    except ValueError as e:  # the message names the file
        raise RunError(str(e)) from None
    if len(checkpoint.history) != 1:  # load checked its shape: one list of records per model
        raise RunError(f"{path}: its history is not the records of one model")
    return checkpoint, [check_record(r, i, f"{path}: history record {i}")
                        for i, r in enumerate(checkpoint.history[0], 1)]


def _check(values: dict, kinds: dict, where: str) -> None:
    for name, kind in kinds.items():
        if name not in values:
            raise RunError(f"{where}{name} is missing")
        if not kind.test(values[name]):
            raise RunError(f"{where}{name} must be {kind.text}, got {_short(values[name])}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
