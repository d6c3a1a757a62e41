"""A training process for the kill, signal and multi-process tests: fit on fixed data with a checkpoint
after every step, resuming whatever checkpoint it finds; writes the final params to OUT.

    python tests/workers/fit_worker.py CHECKPOINT_DIR OUT [--every STEPS]
    python -m torch.distributed.run --nproc_per_node=2 tests/workers/fit_worker.py CHECKPOINT_DIR OUT
"""

import argparse
import sys

import torch

import funcvae

EPOCHS, BATCH = 4, 50


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(600, 784, generator=g), torch.rand(100, 784, generator=g)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out")
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever else runs
    x, x_val = data()
    params = funcvae.init(seed=0, hidden=(32,), latent=4)
    try:
        params, _ = funcvae.fit(params, x, epochs=EPOCHS, batch_size=BATCH, val_data=x_val, seed=1, compile=False,
                                checkpoint_dir=args.checkpoint_dir, resume=True, checkpoint_every=args.every,
                                progress=False)
    except funcvae.Interrupted as e:
        print(e, file=sys.stderr)
        return 128 + e.signum
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        funcvae.save_params(args.out, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
