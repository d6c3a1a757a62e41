"""A training process for the kill, signal and multi-process tests: fit on fixed data with a checkpoint
after every step, resuming whatever checkpoint it finds; writes the final params to OUT.

    python tests/workers/fit_worker.py CHECKPOINT_DIR OUT [--every STEPS] [--pause FOLDER]

``--seed-by-rank``: each process of a data-parallel run makes other params (refused before any work).
``--pause FOLDER``: after the first epoch, create FOLDER/paused and wait until FOLDER/go exists (a run
caught while it holds its checkpoint folder). A run refused the folder exits with 3.
    python -m torch.distributed.run --nproc_per_node=2 tests/workers/fit_worker.py CHECKPOINT_DIR OUT
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import funcvae

EPOCHS, BATCH = 4, 50


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(600, 784, generator=g), torch.rand(100, 784, generator=g)


def pause(folder: Path):
    def callback(record: dict) -> None:
        if record["epoch"] == 1:
            (folder / "paused").touch()
            while not (folder / "go").exists():
                time.sleep(0.01)
    return callback


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--pause", type=Path, default=None)
    parser.add_argument("--seed-by-rank", action="store_true", help="each process makes its params from its rank")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever else runs
    x, x_val = data()
    seed = int(os.environ.get("RANK", "0")) if args.seed_by_rank else 0
    params = funcvae.init(seed=seed, hidden=(32,), latent=4)
    try:
        params, _ = funcvae.fit(params, x, epochs=EPOCHS, batch_size=BATCH, val_data=x_val, seed=1, compile=False,
                                checkpoint_dir=args.checkpoint_dir, resume=True, checkpoint_every=args.every,
                                progress=False, callbacks=() if args.pause is None else [pause(args.pause)])
    except funcvae.Interrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    except funcvae.FolderLocked as e:
        print(e, file=sys.stderr)
        return 3
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        funcvae.save_params(args.out, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
