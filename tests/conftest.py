
import pytest
import torch

torch.set_num_threads(1)  # the tests use small tensors: one thread is fastest and steady on a shared machine


@pytest.fixture(scope="session")
def gmm2d():
    import pretrained
    return pretrained.load("gmm-2d")


@pytest.fixture(scope="session")
def gmm16d():
    import pretrained
    return pretrained.load("gmm-16d")

