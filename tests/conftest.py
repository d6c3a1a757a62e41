"""Shared test settings: a derandomised hypothesis profile on CI, small real-data fixtures."""

import os

import pytest
import torch
from hypothesis import settings

from funcvae._runtime import compiling

# torch calls are slow for hypothesis' default deadline; CI runs the same examples every time.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def fashion():
    """(train, held-out) real Fashion-MNIST subsets: 2048 and 1000 images, (N, 1, 28, 28) in [0, 1]."""
    import funcvae

    train = funcvae.data.load("fashion-mnist", "train")[:2048].clone()
    test = funcvae.data.load("fashion-mnist", "test")[:1000].clone()
    return train, test


@pytest.fixture(autouse=True)
def _fresh_state():
    # funcvae never touches the global RNG; tests that build inputs with it start from the same state.
    torch.manual_seed(1234)
    # Each test compiles from scratch: test backends count graphs, and dynamo's recompile limit is per
    # process, which a whole test session would otherwise exhaust.
    torch._dynamo.reset()
    compiling.clear()
