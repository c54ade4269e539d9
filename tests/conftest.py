import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def gmm2d():
    import pretrained
    return pretrained.load("gmm-2d")


@pytest.fixture(scope="session")
def gmm16d():
    import pretrained
    return pretrained.load("gmm-16d")
