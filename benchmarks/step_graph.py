"""The operations of the default model's compiled training step, as dynamo traces them: one line per call in
the FX graph(s) the runner hands to the compiler. Run in two checkouts and diff the output to see whether a
change touched the step's compute, independently of a noisy clock.

    python3 benchmarks/step_graph.py > this.txt
    python3 benchmarks/step_graph.py ../before > before.txt && diff before.txt this.txt

(``../before``: a worktree of another commit, whose funcvae is then the one imported.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TREE = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))  # that checkout's funcvae

import funcvae  # noqa: E402
from funcvae import objectives, optim  # noqa: E402
from funcvae._runtime import distributed  # noqa: E402
from funcvae._train import watch  # noqa: E402
from funcvae._train.runner import make_runner  # noqa: E402


def main() -> None:
    graphs = []

    def record(gm, inputs):  # a compiler backend that keeps the graph and runs it as it is
        graphs.append(gm)
        return gm.forward

    params = funcvae.init(seed=0)
    opt = optim.apply_if_finite(optim.adam(1e-3), freeze=True)
    step = funcvae.make_train_step(params.model, objectives.elbo(), opt)
    runner = make_runner(step, compile=record, watching=True, world=distributed.join(torch.device("cpu")),
                         stack=False, per_example=False, n_examples=256, batch_size=128, like=torch.zeros(()))
    acc = torch.zeros(1, 5, dtype=torch.float64)
    batch = funcvae.Batch(torch.rand(128, 784), torch.randn(128, 1, 20), torch.ones(128))
    runner.call(funcvae.init_state(params, objectives.elbo(), opt), batch, acc, watch.start(acc, 0), 0, [])
    for gm in graphs:
        for node in gm.graph.nodes:
            if node.op in ("call_function", "call_method"):
                print(node.op, getattr(node.target, "__name__", str(node.target)))


if __name__ == "__main__":
    main()
