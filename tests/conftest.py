import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
