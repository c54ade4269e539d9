"""Benchmarks run only when asked: ``pytest benchmarks --benchmark-enable`` (testpaths keeps them out of ``pytest``)."""
import torch

torch.set_num_threads(1)
