
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



@pytest.fixture(autouse=True, scope="module")
def _forget_tuned_presets():
    """Presets a test module registers (``bench tune``, ``tuned:NAME``) leave the registry with that module: other
    tests list every sampler, and a later module may register the same name with other options."""
    from bench.tune import TUNED_PREFIX
    from samplers.registry import _REGISTRY
    before = set(_REGISTRY)
    yield
    for name in set(_REGISTRY) - before:
        if name.startswith(TUNED_PREFIX):
            del _REGISTRY[name]
