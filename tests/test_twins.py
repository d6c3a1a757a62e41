"""The benchmark's nn.Module twins compute the functional models' loss: same weights, same eps, same number."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from funcvae import distributions as D
from funcvae import flows, ladder, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import twins  # noqa: E402

FLOAT32 = dict(rtol=1e-5, atol=1e-4)  # a loss of hundreds of nats, summed over 784 pixels in float32


def _recon(logits, x):
    return F.binary_cross_entropy_with_logits(logits, x, reduction="sum")


@pytest.mark.parametrize("hidden, latents", [((512, 256), (64, 32)), ((64,), (8,)), ((64, 32, 16), (12, 8, 4))])
def test_the_ladder_twin_computes_the_functional_loss(hidden, latents):
    sizes = {"hidden": hidden, "latents": latents, "activation": "relu"}
    gen = torch.Generator().manual_seed(0)
    tree = ladder.init(gen, 784, **sizes)
    x = torch.rand(8, 784, generator=gen)
    eps = {k: torch.randn(8, n, generator=gen) for k, n in ladder.groups(latents).items()}

    def negative_elbo(x, eps):
        z, log_q = ladder.posterior(tree, x, eps, **sizes)
        log_p = ladder.log_prior(tree, z, **sizes)
        return _recon(ladder.decode(tree, z, **sizes), x) + sum(log_q[k] - log_p[k] for k in log_q)

    twin = twins.load_tree(twins.LadderTwin(784, hidden, latents, "relu"), tree)
    torch.testing.assert_close(twin(x, eps), vmap(negative_elbo)(x, eps).mean(), **FLOAT32)


def test_the_iaf_twin_computes_the_functional_loss():
    gen = torch.Generator().manual_seed(1)
    tree = {"encoder": {"hidden_0": nn.dense_init(gen, 784, 400), "iaf": flows.iaf_init(gen, 400, 20, 3, 200)},
            "decoder": {"hidden_0": nn.dense_init(gen, 20, 400), "out": nn.dense_init(gen, 400, 784)}}
    x, eps = torch.rand(8, 784, generator=gen), torch.randn(8, 20, generator=gen)

    def negative_elbo(x, eps):
        h = F.relu(nn.dense(tree["encoder"]["hidden_0"], x))
        z, log_q = flows.iaf_sample(tree["encoder"]["iaf"], h, eps)
        logits = nn.dense(tree["decoder"]["out"], F.relu(nn.dense(tree["decoder"]["hidden_0"], z)))
        return _recon(logits, x) + log_q - D.standard_normal_log_prob(z).sum()

    twin = twins.load_tree(twins.IAFTwin(784, 400, 20, steps=3, made_hidden=200), tree)
    torch.testing.assert_close(twin(x, eps), vmap(negative_elbo)(x, eps).mean(), **FLOAT32)


def test_load_tree_names_what_does_not_match():
    tree = ladder.init(torch.Generator().manual_seed(2), 20, hidden=(8,), latents=(3,), activation="relu")
    with pytest.raises(KeyError, match="top_down"):
        twins.load_tree(twins.LadderTwin(20, (8, 6), (3, 2)), tree)
