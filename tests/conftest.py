import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
# the benchmark scripts' harness and rows (_harness, _rows, _clip), as `python benchmarks/x.py` sees them
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture
def tiny_images():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
