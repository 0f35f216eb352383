"""A streamed ImageFolder split decoded in loader worker processes: 2 processes × 2 workers partition every epoch's
indices (disjoint, complete, worker j decoding steps j, j+2, ...), and the batches — indices and images — are those of
the in-process path for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.data.image_readers import StreamingImageFolder, list_image_files
from clpoison.data.image_stream import StreamedImageBatches, worker_steps
from clpoison.data.loader import ResidentBatches, epoch_permutation
from clpoison.errors import ConfigError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> StreamingImageFolder:
    root = tmp_path_factory.mktemp("imgs")
    r = np.random.default_rng(0)
    for i in range(42):
        d = root / f"c{i % 3}"
        d.mkdir(exist_ok=True)
        Image.fromarray(r.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(d / f"{i:02d}.png")
    files = list_image_files(root)
    return StreamingImageFolder([(f, int(f.parent.name[1])) for f in files], ["c0", "c1", "c2"], 8, "tiny")


def test_worker_steps_partition_an_epoch():
    assert [list(worker_steps(7, j, 3)) for j in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_two_ranks_two_workers_partition_the_epoch_like_the_in_process_path(folder):
    seed, epoch, b, world = 5, 3, 4, 2
    seen: list[int] = []
    for r in range(world):
        streamed = list(StreamedImageBatches(folder, b, CPU, seed=seed, rank=r, world_size=world, workers=2).decoded(epoch))
        today = list(ResidentBatches(folder, b, CPU, seed=seed, rank=r, world_size=world).epoch(epoch))  # in-process
        assert len(streamed) == len(today) == 42 // world // b == 5
        for s, ((worker, idx, images), (idx0, images0, _)) in enumerate(zip(streamed, today)):
            assert worker == s % 2, "worker j decodes steps j, j+2, ..."
            assert torch.equal(idx, idx0) and torch.equal(images, images0)
            assert images.dtype == torch.uint8 and images.shape == (b, 3, 8, 8)
        seen += [int(i) for _, idx, _ in streamed for i in idx]
    assert len(seen) == len(set(seen)) == 40  # no image twice over ranks and workers
    assert sorted(seen) == sorted(epoch_permutation(42, seed, epoch)[:40].tolist())  # the epoch's first 10 global batches


def test_in_process_and_device_batches_are_the_same(folder):
    two = StreamedImageBatches(folder, 8, CPU, seed=1, workers=2)
    zero = StreamedImageBatches(folder, 8, CPU, seed=1, workers=0)
    got, want = list(two.epoch(0)), list(zero.epoch(0))
    assert len(got) == len(want) == len(two) == 5
    for (i1, x1, s1), (i0, x0, s0) in zip(got, want):
        assert torch.equal(i1, i0) and torch.equal(x1, x0) and s1 is s0 is None
    assert not torch.equal(torch.cat([i for i, _, _ in got]), torch.cat([i for i, _, _ in two.epoch(1)]))  # reshuffled


def test_bad_worker_count_is_one_line(folder):
    with pytest.raises(ConfigError, match="data.stream_workers=-1 must be >= 0"):
        StreamedImageBatches(folder, 4, CPU, workers=-1)
