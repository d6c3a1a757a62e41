"""Params and whole training states on disk: safetensors (no pickle, so loading runs no code), tensors
addressed by path, everything else as JSON metadata, written whole and checksummed (``_runtime.files``).

A load checks the metadata's fields (types and ranges), then the checksums, and only then builds anything
from the file: a damaged file is refused, naming the file and what is wrong.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import marshal
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optree
import torch
from torch import Tensor

from funcvae import models
from funcvae._runtime import records
from funcvae._runtime.files import from_json, read, verify, write
from funcvae.model import Model, Params, check_keys, leaves_by_path, paths_and_leaves
from funcvae.contract import check_params, stack_size
from funcvae.step import TrainState

_MODEL_KEY = "funcvae_model"
_STATE_KEY = "funcvae_state"
_FORMAT = "funcvae-checkpoint-3"
_TREE_KEY = "funcvae_tree"  # the params tree's dicts, in order, empty ones included (leaves: null)
_FACTS = ("likelihood", "prior", "input_shape", "latent", "context")
#: The roles of a user's model's functions, as its description names them (a model has encode or posterior).
_ROLES = ("init", "encode", "posterior", "decode", "prior_log_prob", "prior_sample")


def describe(model: Model) -> dict:
    """What a file records of its model: the built-in spec (enough to rebuild it), or for a user's model its
    likelihood, prior, shapes, context and the names of its functions (to name a mismatch, not to rebuild it)."""
    if model.spec is not None:
        return {"spec": model.spec.to_dict()}
    functions = _functions(model)
    facts = _facts(model)
    if facts["context"] is None:  # an unconditional model is described as before conditional models were
        del facts["context"]
    return {"custom": {**{role: _name(fn) for role, fn in functions.items()}, **facts, "code": code_digest(model),
                       "qualnames": [getattr(fn, "__qualname__", type(fn).__qualname__) for fn in functions.values()]}}


def _functions(model: Model) -> dict:
    """A user's model's functions by role (``_ROLES``), in that order."""
    found = {"init": model.init_fn, "encode": model.encode, "posterior": model.posterior, "decode": model.decode,
             "prior_log_prob": getattr(model.prior, "log_prob_fn", None),
             "prior_sample": getattr(model.prior, "sample_fn", None)}
    return {role: fn for role, fn in found.items() if fn is not None}


@functools.lru_cache(maxsize=None)
def code_digest(model: Model) -> str:
    """SHA-256 of what identifies a user's model's code: the files that define its functions (so an edit to a
    helper they call counts too), or where a function has no file (a REPL), its compiled code. Recorded with
    params and checkpoints, so that other code reading them is refused by default. Read once per model and
    process: the code that runs, not a file edited since, and no reads at every save."""
    digest = hashlib.sha256()
    for fn in _functions(model).values():
        digest.update(_code_of(fn))
    return digest.hexdigest()


def _code_of(fn) -> bytes:
    fn = inspect.unwrap(getattr(fn, "func", fn))  # a functools.partial's function
    try:
        return Path(inspect.getsourcefile(fn)).read_bytes()
    except (TypeError, OSError):
        pass
    code = getattr(fn, "__code__", None)
    return marshal.dumps(code) if code is not None else f"{type(fn).__module__}.{type(fn).__qualname__}".encode()


def _facts(model: Model) -> dict:
    """What a model states besides its functions (``_FACTS``), as JSON values."""
    return {"likelihood": model.likelihood.to_dict(), "prior": model.prior.to_dict(),
            "input_shape": list(model.input_shape), "latent": model.latent, "context": model.context}


def save_params(path: str | os.PathLike, params: Params) -> None:
    """Write ``params`` to ``path`` (a .safetensors file) atomically; leaves by path, the model described."""
    check_params(params)
    write(Path(path), leaves_by_path(params), {_MODEL_KEY: json.dumps(describe(params.model)),
                                                _TREE_KEY: _skeleton(params.tree)})


def _moved_field(name: str, field: str) -> property:
    """``Checkpoint.<name>``, now ``Checkpoint.train.<field>``, for one release (DeprecationWarning)."""
    def get(self):
        warnings.warn(f"Checkpoint.{name} is now Checkpoint.train.{field}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return getattr(self.train, field)
    return property(get)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """Everything needed to continue a run exactly.

    Attributes:
      model: the model ``train.tree`` is the params of (``params`` joins the two).
      train: the ``TrainState``: params' tensors (one model or a stack), optimiser state (as saved, a dict
        ``{path: tensor}`` unless ``load`` was given the ``template`` to rebuild its structure from), the
        objective's numbers and the steps taken.
      epoch: epochs completed; ``step``: steps done within epoch ``epoch + 1`` (0 at an epoch boundary).
      config: the run's settings (seeds among them) and a fingerprint of its data, as plain JSON values.
      history: the per-epoch records so far (one list per model); a non-finite metric is written as the
        string "NaN", "Infinity" or "-Infinity" (``funcvae._runtime.records``) and read back as a float.
      rng: mid-epoch only: the state of each model's generator (uint8, one row per model) and ``sums``,
        the epoch's running metric sums, so the rest of the epoch draws and reports exactly as it would have.
    """

    model: Model
    train: TrainState
    epoch: int
    step: int = 0
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    rng: Tensor | None = None
    sums: Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.model, Model) or not isinstance(self.train, TrainState):
            raise TypeError("Checkpoint(params, opt_state, hyper, count, epoch, ...) is now Checkpoint(model, "
                            "TrainState(params.tree, opt_state, objective_state, count), epoch, ...)")

    @property
    def params(self) -> Params:
        return Params(self.model, self.train.tree)

    opt_state = _moved_field("opt_state", "opt_state")
    hyper = _moved_field("hyper", "objective_state")
    count = _moved_field("count", "count")


def save(path: str | os.PathLike, state: Checkpoint) -> None:
    """Write ``state`` to ``path`` atomically (see ``Checkpoint``); a state that ``load`` would refuse (its
    fields inconsistent) is refused here, before anything is written."""
    n = stack_size(state.params)
    tensors = {f"params/{k}": v for k, v in leaves_by_path(state.params).items()}
    tensors.update({f"opt/{k}": v for k, v in paths_and_leaves(state.train.opt_state)})
    tensors.update({f"hyper/{k}": v for k, v in state.train.objective_state.items()})
    tensors["count"] = state.train.count
    for name in ("rng", "sums"):
        if getattr(state, name) is not None:
            tensors[name] = getattr(state, name)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"format": _FORMAT, "model": describe(state.model), "epoch": state.epoch, "step": state.step,
            "config": state.config, "history": state.history}
    text = records.dumps(meta)
    path = Path(path)
    _check_stacked(path, n, _state_fields(records.loads(text), tensors, path), tensors)
    write(path, tensors, {_STATE_KEY: text, _TREE_KEY: _skeleton(state.train.tree)})


def load(path: str | os.PathLike, *, device: torch.device | str = "cpu", model: Model | None = None,
         template=None, accept_changed_code: bool = False) -> Checkpoint:
    """Read a ``Checkpoint`` written by ``save``.

    Args:
      model: the model of a user's (not built-in) model; a built-in one rebuilds itself from the file.
      template: an optimiser state of the run's structure (``optimizer.init(...)``, stacked for a stack);
        its leaves are replaced by the file's, by path. Without it ``opt_state`` is ``{path: tensor}``.
      accept_changed_code: read it with ``model`` although its functions' names or code differ from those
        that wrote the file (refused by default: other code may read the params as something else).

    Raises:
      ValueError: a corrupt, truncated or mismatched file, naming the file and the field or tensor that is
        wrong; FileNotFoundError.
    """
    path = Path(path)
    tensors, meta = read(path)
    if _STATE_KEY not in meta:
        raise ValueError(f"{path} is not a funcvae checkpoint (no training state in its metadata)")
    state = _state_fields(records.decode(from_json(meta[_STATE_KEY], path, "training state")), tensors, path)
    model = _model_of(state["model"], model, path, reader="load")
    verify(path, tensors, meta)
    params = Params(model, _params_tree(_under("params/", tensors), meta, path))
    n = _check_leaves(params, path)
    _check_code(state["model"], model, path, accept_changed_code)
    _check_stacked(path, n, state, tensors)
    opt, hyper = _under("opt/", tensors), _under("hyper/", tensors)
    train = TrainState(params.tree, opt if template is None else restore(template, opt, path), hyper, tensors["count"])
    return Checkpoint(model, _to(device, train), state["epoch"], state["step"], state["config"], state["history"],
                      tensors.get("rng"), _to(device, tensors.get("sums")))


def _state_fields(state, tensors: dict, path: Path) -> dict:
    """The training state's JSON fields and its tensors, each checked for type and range: ValueError naming
    the file and the field. What needs the model (leaves, how many models) is checked once it is built."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: the training state is not a JSON object: {state!r:.80}")
    if state.get("format") != _FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}; this funcvae reads {_FORMAT!r} "
                         "(a checkpoint resumes with the funcvae that wrote it)")
    for name, kind in (("model", dict), ("epoch", int), ("step", int), ("config", dict), ("history", list)):
        if name not in state:
            raise _field(path, name, "is missing")
        if not isinstance(state[name], kind) or isinstance(state[name], bool):
            raise _field(path, name, f"must be a JSON {kind.__name__}, got {state[name]!r:.80}")
    for name in ("epoch", "step"):
        if state[name] < 0:
            raise _field(path, name, f"must be >= 0, got {state[name]}")
    for m, records_ in enumerate(state["history"]):
        if not isinstance(records_, list) or len(records_) != state["epoch"]:
            raise _field(path, f"history[{m}]", f"must list one record per epoch done ({state['epoch']}), got "
                                                f"{records_!r:.80}")
        for e, record in enumerate(records_):
            if not isinstance(record, dict) or record.get("epoch") != e + 1 or not all(
                    _number(v) or isinstance(v, dict) and all(_number(u) for u in v.values())
                    for v in record.values()):  # a dict: a latent group's numbers (kl_groups)
                raise _field(path, f"history[{m}][{e}]", f"must be epoch {e + 1}'s record of numbers, got "
                                                         f"{record!r:.80}")
    _tensor_field(path, tensors, "count", (torch.int64,))
    for name in _under("hyper/", tensors):
        _tensor_field(path, tensors, f"hyper/{name}", (torch.float64,))
    mid = state["step"] > 0
    for name, dtypes in (("rng", (torch.uint8,)), ("sums", (torch.float32, torch.float64))):
        if mid != (name in tensors):
            raise _field(path, name, f"must be {'present' if mid else 'absent'} at step {state['step']}")
        if mid:
            _tensor_field(path, tensors, name, dtypes, ndim=2)
    return state


def _tensor_field(path: Path, tensors: dict, name: str, dtypes: tuple, ndim: int | None = None) -> None:
    t = tensors.get(name)
    if t is None:
        raise _field(path, name, "is missing")
    if t.dtype not in dtypes or (ndim is not None and t.ndim != ndim):
        raise _field(path, name, f"must be a{'' if ndim is None else f' {ndim}-d'} tensor of "
                                 f"{' or '.join(map(str, dtypes))}, got {t.dtype} of shape {tuple(t.shape)}")


def _check_stacked(path: Path, n: int | None, state: dict, tensors: dict) -> None:
    """The per-model fields agree with the params: one model, or a stack of ``n``."""
    rows = 1 if n is None else n
    if len(state["history"]) != rows:
        raise _field(path, "history", f"must hold {rows} list(s), one per model, got {len(state['history'])}")
    lead = () if n is None else (n,)
    for name, t in [("count", tensors["count"]), *((f"hyper/{k}", v) for k, v in _under("hyper/", tensors).items())]:
        if tuple(t.shape) != lead:
            raise _field(path, name, f"must have shape {lead}, got {tuple(t.shape)}")
    for name in ("rng", "sums"):
        if name in tensors and tensors[name].shape[0] != rows:
            raise _field(path, name, f"must have {rows} row(s), one per model, got {tensors[name].shape[0]}")


def _field(path: Path, name: str, problem: str) -> ValueError:
    return ValueError(f"{path}: field {name!r} {problem}")


def _under(prefix: str, tensors: dict) -> dict:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _to(device, tree):
    return None if tree is None else optree.tree_map(lambda t: t.to(device), tree, namespace="funcvae")


def restore(template, flat: dict, path: Path):
    """An optimiser state of ``template``'s structure with the leaves of ``flat`` (``{path: tensor}``, as ``load``
    returns it without a template); ValueError naming the file and the paths that differ."""
    want = dict(paths_and_leaves(template))
    missing, extra = sorted(want.keys() - flat.keys()), sorted(flat.keys() - want.keys())
    if missing or extra:
        raise ValueError(f"{path}: its optimiser state does not match this run's optimiser (missing {missing[:5]}, "
                         f"unexpected {extra[:5]})")
    for k, t in want.items():
        if flat[k].shape != t.shape or flat[k].dtype != t.dtype:
            raise ValueError(f"{path}: optimiser leaf {k} has shape {tuple(flat[k].shape)} and dtype "
                             f"{flat[k].dtype}, this run's has {tuple(t.shape)} and {t.dtype}")
    treespec = optree.tree_structure(template, namespace="funcvae")
    return optree.tree_unflatten(treespec, [flat[k] for k in want])


def load_params(path: str | os.PathLike, *, model: Model | None = None, device: torch.device | str = "cpu",
                accept_changed_code: bool = False) -> Params:
    """Read params written by ``save_params``.

    Args:
      model: the ``Model`` of a user's model (required for one; a built-in model rebuilds itself from the
        file, and when passed must match it).
      accept_changed_code: as for ``load``.

    Raises:
      ValueError: a bad or corrupt file (naming the file and what is wrong), a user's model without
        ``model=``, or a model whose leaves differ from the file's (naming them).
    """
    path = Path(path)
    tensors, meta = read(path)
    if _MODEL_KEY not in meta:
        raise ValueError(f"{path} has no funcvae model in its metadata; was it written by funcvae.save_params?")
    described = from_json(meta[_MODEL_KEY], path, "model")
    model = _model_of(described, model, path)
    verify(path, tensors, meta)
    params = Params(model, _params_tree(tensors, meta, path))
    _check_leaves(params, path)
    _check_code(described, model, path, accept_changed_code)
    return _to(device, params)


def _number(value) -> bool:
    """Whether a history value is a number or None."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _model_of(described, model: Model | None, path: Path, reader: str = "load_params") -> Model:
    """The model a file describes: ``model`` when given (it must be of the same kind), else the built-in
    model its spec rebuilds."""
    if not isinstance(described, dict) or not ({"spec", "custom"} & described.keys()):
        raise ValueError(f"{path}: the model metadata is not a funcvae model description: {described!r}")
    if model is not None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a funcvae.Model, got {type(model).__name__}")
        mine = None if model.spec is None else json.loads(json.dumps(model.spec.to_dict()))  # as it reads back
        if "spec" in described and mine is not None and described["spec"] != mine:
            raise ValueError(f"{path} holds a {described['spec']} model, not {model}")
        saved, given = _described_facts(described, path), _facts(model)
        differ = {k: (saved[k], given[k]) for k in saved if saved[k] != given[k]}
        if differ:
            raise ValueError(f"{path} holds a model that differs from the one passed in " + "; ".join(
                f"{k}: file {a!r}, model {b!r}" for k, (a, b) in differ.items()))
        return model
    if "custom" in described:
        c = described["custom"]
        q = f"encode={c['encode']}" if "encode" in c else f"posterior={c.get('posterior')}"
        raise ValueError(f"{path} holds a user's model ({q}, decode={c.get('decode')}); "
                         f"pass it: {reader}(path, model=model)")
    return _built_in(described["spec"], path)


def _check_code(described: dict, model: Model, path: Path, accept_changed_code: bool) -> None:
    """ValueError when the user's model that reads the file is not the code that wrote it (names or code
    digest), unless accepted."""
    changed = code_changes(described, json.loads(json.dumps(describe(model))))
    if changed and not accept_changed_code:
        raise ValueError(f"{path} was written by other model code ({'; '.join(changed)}): code that changed "
                         "may read these params as something else. If the change keeps their meaning, pass "
                         "accept_changed_code=True (the command line's --accept-changed-code)")


def code_changes(saved: dict, now: dict) -> list[str]:
    """What differs between two descriptions (``describe``) of a user's model: its functions (by qualified
    name, wherever their module was imported from: a script's ``__main__`` is the same code imported) and the
    digest of their code. A file written before digests were recorded is not compared."""
    if not (code_recorded(saved) and code_recorded(now)):
        return []
    old, new = saved["custom"], now["custom"]
    roles = [r for r in _ROLES if r in new]
    was = dict(zip([r for r in _ROLES if r in old], old.get("qualnames") or []))
    changed = [f"{role}: file {was.get(role)!r}, now {b!r}" for role, b in zip(roles, new["qualnames"])
               if was.get(role) != b]
    changed += [f"{role}: file {was[role]!r}, now none" for role in was if role not in roles]
    return changed + (["the files defining its functions"] if old["code"] != new["code"] else [])


def code_recorded(described) -> bool:
    """Whether a model description (``describe``) records the digest of a user's model's code."""
    return isinstance(described, dict) and "code" in described.get("custom", {})


def without_code(described, names: bool = True):
    """A model description (``describe``) without what identifies a user's model's code: the digest, and with
    ``names`` its functions' names (``code_changes`` compares those); a built-in's as it is."""
    if not (isinstance(described, dict) and isinstance(described.get("custom"), dict)):
        return described
    code = ("code", "qualnames") + (_ROLES if names else ())
    return {**described, "custom": {k: v for k, v in described["custom"].items() if k not in code}}


def _built_in(spec, path: Path) -> Model:
    try:
        return models.from_spec(models.ModelSpec.from_dict(spec))
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: the spec metadata does not describe a funcvae model ({e})") from e


def _described_facts(described: dict, path: Path) -> dict:
    """The facts (``_facts``) a file's description states: a user's model's as recorded, a built-in's from
    its spec."""
    if "custom" in described:
        return {k: described["custom"].get(k) for k in _FACTS}  # a file of an unconditional model: context None
    return _facts(_built_in(described["spec"], path))


def _check_leaves(params: Params, path: Path) -> int | None:
    """The stack size of the file's params, or ValueError naming the file and the bad leaf."""
    try:
        return stack_size(params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"



def _skeleton(tree: dict) -> str:
    """The JSON of ``tree``'s dicts in their order, a leaf as null; TypeError naming a key that a path cannot
    hold."""
    check_keys(tree, "the params tree")

    def skeleton(node: dict) -> dict:
        return {k: skeleton(v) if isinstance(v, dict) else None for k, v in node.items()}
    return json.dumps(skeleton(tree))


def _params_tree(tensors: dict, meta: dict, path: Path) -> dict:
    """The params tree as it was saved: its dicts in their order, empty ones included, from the file's
    skeleton (a file written before skeletons were recorded: nested by path, keys sorted)."""
    if _TREE_KEY not in meta:
        return _tree_from_paths(tensors, path)
    skeleton = from_json(meta[_TREE_KEY], path, "params tree")
    left = dict(tensors)

    def build(node, prefix: str) -> dict:
        if not isinstance(node, dict):
            raise ValueError(f"{path}: the params tree metadata is not a tree of dicts at {prefix or 'the top'!r}")
        out = {}
        for key, sub in node.items():
            name = prefix + key
            if sub is None:
                if name not in left:
                    raise ValueError(f"{path}: tensor {name!r} of the params tree is missing")
                out[key] = left.pop(name)
            else:
                out[key] = build(sub, name + "/")
        return out
    tree = build(skeleton, "")
    if left:
        raise ValueError(f"{path}: tensor(s) {sorted(left)[:5]} are not in the params tree")
    return tree


def _tree_from_paths(tensors: dict, path: Path) -> dict:
    """``{"a/b": t}`` -> ``{"a": {"b": t}}``; a name that is both a leaf and a folder is an error (sorted
    order puts ``a`` before ``a/b``, so the leaf is met first)."""
    tree: dict = {}
    for key in sorted(tensors):
        node = tree
        *parents, leaf = key.split("/")
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: tensor {key!r} lies under another tensor")
        node[leaf] = tensors[key]
    return tree
