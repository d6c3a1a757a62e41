"""A ``fit`` callback that logs a run to Weights & Biases (the callback protocol: docs/training.md). W&B's
offline mode needs no account: the run is written under ./wandb, and ``wandb sync`` uploads it later.

    pip install wandb   # not a dependency of funcvae
    WANDB_MODE=offline python3 examples/wandb_logger.py
"""

import wandb

import funcvae


class WandbLogger:
    """fit's settings as the W&B run's config; each epoch's record (nested dicts flattened, ``kl_groups/z1``) and
    learning rate as one W&B step."""

    def start(self, run):
        self.optimizer, self.run = run.optimizer, wandb.init(project="funcvae", config=run.settings)

    def epoch_end(self, record, params, opt_state):
        lr = funcvae.optim.learning_rate(self.optimizer, opt_state)
        self.run.log({**funcvae.callbacks.flatten(record), "lr": lr}, step=record["epoch"])

    def end(self):
        self.run.finish()


if __name__ == "__main__":
    x_train, x_test = funcvae.data.load("fashion-mnist", "train")[:5000], funcvae.data.load("fashion-mnist", "test")[:500]
    funcvae.fit(funcvae.init(seed=0), x_train, epochs=2, val_data=x_test, callbacks=[WandbLogger()])
