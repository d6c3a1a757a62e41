"""``python -m funcvae train | eval | sample | sweep``: parse arguments, call the library, print a table, save
the run (each command's numbers also go to a JSON file beside its pictures).

A model of your own: ``--model my_vae.py:model`` runs the file and trains its ``funcvae.Model`` named
``model``; the run folder records the file, so ``eval``, ``sample`` and ``train --resume`` load it again."""

from __future__ import annotations

import argparse
import logging

from funcvae.cli import evaluate, options, sweep, train
from funcvae.cli.evaluate import format_eval_table
from funcvae.cli.model import model_from_file
from funcvae.cli.options import objective_of, optimizer_of
from funcvae.cli.train import format_header, format_row

__all__ = ["format_eval_table", "format_header", "format_row", "main", "model_from_file", "objective_of",
           "optimizer_of"]


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``, default ``sys.argv[1:]``) and return its exit code; a usage error exits 2."""
    args = _parser().parse_args(argv)
    # The compiler's note that a CPU-only machine has no CUDA runtime would land in the middle of the table.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per module of this package, each naming its ``run`` and parser."""
    parser = argparse.ArgumentParser(prog="python -m funcvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    model, common = options.model_options(), options.common_options()
    train.add_parser(sub, model)
    evaluate.add_eval(sub, common)
    evaluate.add_sample(sub, common)
    sweep.add_parser(sub, common, model)
    return parser
