"""Train the shipped feature network of ``funcvae.quality.network`` on Fashion-MNIST's 60k training images
and write it where the package reads it; prints its held-out accuracy (the 10k test images), the file's
SHA-256 and size, and the time taken. Copy the accuracy and the SHA-256 into ``ACCURACY`` and ``SHA256``.

    python3 scripts/train_features.py            # one CPU thread, about five minutes

The weights depend on the number of CPU threads (it changes the order of the convolutions' sums): one thread,
the default, is how the shipped file was made, and reproduces it on the same kind of CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from funcvae.quality import network


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tree = network.train(*network.labelled("fashion-mnist", "train"), seed=args.seed, epochs=args.epochs)
    trained = time.perf_counter() - start
    acc = network.accuracy(tree, *network.labelled("fashion-mnist", "test"))
    sha = network.save(tree, args.out)
    size = Path(args.out).stat().st_size
    print(f"trained in {trained:.0f} s (epochs {args.epochs}, seed {args.seed}, CPU threads {args.threads})")
    print(f"held-out accuracy {acc!r} (Fashion-MNIST test, 10000 images)")
    print(f"wrote {args.out}: {size} bytes ({size / 2**20:.2f} MiB), SHA-256 {sha}")
    return {"accuracy": acc, "sha256": sha, "bytes": size, "seconds": trained}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", default=network.SEED, type=int)
    p.add_argument("--epochs", default=network.EPOCHS, type=int)
    p.add_argument("--threads", default=1, type=int, help="torch CPU threads (default: 1, as shipped)")
    p.add_argument("--out", default=network.WEIGHTS, type=Path, help="where to write the weights "
                   "(default: the package's file)")
    return p


if __name__ == "__main__":
    main()
