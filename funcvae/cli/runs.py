"""Run folders: a new one, named by the time it starts, holding config.json; and what a finished one holds."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import funcvae
from funcvae.cli.model import recorded_model


def create(parent: Path, name: str, config: dict) -> Path:
    """A new run folder ``parent/<YYYYmmdd-HHMMSS>-name`` (``-2``, ``-3``, ... appended when runs start in the
    same second) holding ``config`` as config.json."""
    parent.mkdir(parents=True, exist_ok=True)
    stamped = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    for i in itertools.count(1):
        run_dir = parent / (stamped if i == 1 else f"{stamped}-{i}")
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run_dir


def open_run(args) -> tuple[Path, dict, funcvae.Params, list[dict]]:
    """The run folder of ``RUN``: its config, params (of the user's model file it records, if any) and history
    (empty without history.jsonl)."""
    run_dir = Path(args.run_dir)
    for name in ("config.json", "params.safetensors"):
        if not (run_dir / name).is_file():
            args.parser.error(f"{run_dir}: no {name} there (not a finished run folder written by train)")
    config = json.loads((run_dir / "config.json").read_text())
    model = recorded_model(args, config) if config.get("model_file") else None
    params = funcvae.load_params(run_dir / "params.safetensors", model=model)
    log = run_dir / "history.jsonl"
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    return run_dir, config, params, history
