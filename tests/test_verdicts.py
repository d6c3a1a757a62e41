"""``quality.assess``'s verdicts on image sets whose truth is known, built from real Fashion-MNIST images:
collapsed sets (few classes, a few images repeated, one class dominating), memorised ones (training images,
exact, noisy or blurred, alone or a few among fresh ones), a prior hole (blends of two images beside perfect
reconstructions), and clean ones (fresh held-out images, degraded or not, and near-real samples beside perfect
reconstructions). Each set is named by what it is, and by nothing else; the thresholds were set on these sets
(docs/evaluation.md gives each statistic's margin)."""

import math

import pytest
import torch
import torch.nn.functional as F

import funcvae
from funcvae import quality
from funcvae.quality import network

N = 1000  # images in each set: the reference half, the floor half, the samples
TRAIN = 5000  # training images the memorisation check searches


@pytest.fixture(scope="module")
def images():
    """Real halves, fresh held-out images, training images, and other training images with their labels (the
    source of sets of chosen classes)."""
    test, train = funcvae.data.load("fashion-mnist", "test"), funcvae.data.load("fashion-mnist", "train")
    return {"real": test[:2 * N], "fresh": test[2 * N:3 * N], "fresh_2": test[3 * N:4 * N], "train": train[:TRAIN],
            "pool": train[TRAIN:], "labels": funcvae.data.labels("fashion-mnist", "train")[TRAIN:]}


class Kept:
    """The shipped network, its outputs kept per tensor: every set is scored against the same real halves,
    whose features are then computed once."""

    def __init__(self):
        self.tree, self.kept = network.load("fashion-mnist"), {}

    def __call__(self, x):
        key = (x.data_ptr(), tuple(x.shape), x.stride())
        if key not in self.kept:
            self.kept[key] = (x, network.apply(self.tree, x))  # x kept alive: its address names only it
        return self.kept[key][1]


@pytest.fixture(scope="module")
def shipped():
    return Kept()


def blurred(x, sigma):
    """A Gaussian blur of ``sigma`` pixels, edges repeated."""
    reach = math.ceil(3 * sigma)
    kernel = torch.exp(-torch.arange(-reach, reach + 1.0).square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (reach, reach, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, reach, reach), mode="replicate"), kernel.view(1, 1, -1, 1)).clamp(0, 1)


def noisy(x, sigma, seed=0):
    """Gaussian noise of ``sigma`` grey levels, clipped to [0, 1]."""
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def of_classes(d, shares: dict):
    """N other training images, ``shares`` {label: fraction} of them of each label."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.nonzero(d["labels"] == label).flatten() for label in shares]
    picked = [r[torch.randperm(len(r), generator=g)[:round(N * f)]] for r, f in zip(rows, shares.values())]
    return d["pool"][torch.cat(picked)[:N]]


def repeated(d, k):
    """k other training images, each repeated to fill N."""
    return d["pool"][:k].repeat(math.ceil(N / k), 1, 1, 1)[:N]


def among_fresh(d, copies):
    """The first 5% of ``copies`` among fresh held-out images."""
    return torch.cat([copies[:N // 20], d["fresh"][N // 20:]])


EVERY_CLASS = {label: 0.1 for label in range(10)}
SHIRT = 6
CASES = {  # samples, assess's arguments beyond them, the verdicts
    "one class": (lambda d: of_classes(d, {SHIRT: 1.0}), {}, ["sample collapse"]),
    "shirts and T-shirts": (lambda d: of_classes(d, {0: 0.5, SHIRT: 0.5}), {}, ["sample collapse"]),
    "pullovers and coats": (lambda d: of_classes(d, {2: 0.5, 4: 0.5}), {}, ["sample collapse"]),
    "four tops": (lambda d: of_classes(d, {0: 0.25, 2: 0.25, 4: 0.25, SHIRT: 0.25}), {}, ["sample collapse"]),
    "90% shirts": (lambda d: of_classes(d, {**{k: 0.1 / 9 for k in range(10)}, SHIRT: 0.9}), {}, ["sample collapse"]),
    "one image repeated": (lambda d: repeated(d, 1), {}, ["sample collapse"]),
    "10 images repeated": (lambda d: repeated(d, 10), {}, ["sample collapse"]),
    "100 images repeated": (lambda d: repeated(d, 100), {}, ["sample collapse"]),
    "training images": (lambda d: d["train"][:N], {"train": True}, ["memorisation"]),
    "noisy training images": (lambda d: noisy(d["train"][:N], 0.05), {"train": True}, ["memorisation"]),
    "blurred training images": (lambda d: blurred(d["train"][:N], 0.5), {"train": True}, ["memorisation"]),
    "training images blurred more": (lambda d: blurred(d["train"][:N], 1.5), {"train": True}, ["memorisation"]),
    "5% training images": (lambda d: among_fresh(d, d["train"]), {"train": True}, ["memorisation"]),
    "5% blurred training images": (lambda d: among_fresh(d, blurred(d["train"], 1.0)), {"train": True},
                                   ["memorisation"]),
    "blends beside perfect reconstructions": (lambda d: (d["fresh"] + d["fresh_2"]) / 2, {"reconstructions": True},
                                              ["prior hole"]),
    "fresh images": (lambda d: d["fresh"], {"train": True, "reconstructions": True}, []),
    "every class of other images": (lambda d: of_classes(d, EVERY_CLASS), {}, []),
    "blurred fresh images": (lambda d: blurred(d["fresh"], 1.0), {"train": True}, []),
    "fresh images blurred less": (lambda d: blurred(d["fresh"], 0.5), {"train": True, "reconstructions": True}, []),
    "noisy fresh images beside perfect reconstructions": (lambda d: noisy(d["fresh"], 0.05),
                                                          {"train": True, "reconstructions": True}, []),
}


@pytest.mark.parametrize("case", CASES)
def test_each_set_is_named_by_what_it_is(images, shipped, case):
    make, given, named = CASES[case]
    kwargs = {"train": images["train"]} if given.get("train") else {}
    if given.get("reconstructions"):
        kwargs["reconstructions"] = images["real"]  # perfect: the real images themselves
    result = quality.assess(make(images), images["real"], network=shipped, **kwargs)
    assert [v["name"] for v in result["verdicts"]] == named, _figures(result)


def _figures(result):
    """The statistics each verdict reads, for the failure message."""
    sets, memo = result["sets"], result["memorisation"]
    prior, classes = sets["prior samples"], sets["prior samples"]["classes"]
    out = {"effective classes": (classes["effective"], classes["effective_real"]),
           "distinct": (prior["distinct"], prior["distinct_real"]), "fid": {k: v["fid"] for k, v in sets.items()},
           "spread": result["spread"]}
    if memo is not None:
        out["memorisation"] = (memo["share"], memo["expected"], memo["share_se"])
    return out
