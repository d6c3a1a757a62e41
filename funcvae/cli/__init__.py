"""``python -m funcvae train | eval | sample | sweep``: parse arguments, call the library, print a table, save
the run (each command's numbers also go to a JSON file beside its pictures).

A model of your own: ``--model my_vae.py:model`` runs the file and trains its ``funcvae.Model`` named
``model``; the run folder records the file, so ``eval``, ``sample`` and ``train --resume`` load it again.

Exit codes: 0 done; 2 a usage error (an option, before any work) or a run folder that cannot be used as it
is (a garbage file, files of different runs, a resume that would lose epochs: one line naming the file);
1 the run could not go on though the command is right (a non-finite loss; a run folder another command
holds: the same command works once that one ends); 128 + N on signal N (train checkpoints the run; eval, sample
and sweep stop on Ctrl-C with one line, before writing their JSON)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from funcvae._runtime import lock, progress
from funcvae._moved import module_getattr
from funcvae.cli import evaluate, sweep, train
from funcvae.cli.evaluate import format_eval_table
from funcvae.cli.folder import RunError
from funcvae.cli.model import model_from_file
from funcvae.cli.train import format_header, format_row

__all__ = ["format_eval_table", "format_header", "format_row", "main", "model_from_file"]
__getattr__ = module_getattr(__name__, {}, {
    "objective_of": "funcvae.shorthand.build(settings, steps_per_epoch).objectives[0] builds it",
    "optimizer_of": "funcvae.shorthand.build(settings).optimizers[0] builds it"})


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``, default ``sys.argv[1:]``) and return its exit code (see above); a usage error
    exits 2 (``SystemExit``), a run folder that cannot be used returns 2 after one line on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # what options.given reads again
    try:
        with progress.silenced() if getattr(args, "quiet", False) else contextlib.nullcontext():
            return args.run(args)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except lock.FolderLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # eval, sample, sweep: train saves its run and says so itself
        print(f"\ninterrupted: {argv[0]} stopped on Ctrl-C; its JSON record was not written", file=sys.stderr)
        return 128 + signal.SIGINT


def _parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per module of this package, each naming its ``run`` and parser."""
    parser = argparse.ArgumentParser(prog="python -m funcvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    train.add_parser(sub)
    evaluate.add_eval(sub)
    evaluate.add_sample(sub)
    sweep.add_parser(sub)
    return parser
