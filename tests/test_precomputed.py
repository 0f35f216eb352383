"""``attack.name: precomputed``: an exported poison becomes the training split, checked against its manifest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clpoison.attacks import ATTACKS
from clpoison.poisoned.export import export_poisoned
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.errors import ClpoisonError, ConfigError


def splits(seed: int = 0) -> ImageSplits:
    g = torch.Generator().manual_seed(seed)
    mk = lambda n: ImageDataset(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),  # noqa: E731
                                torch.arange(n) % 2, ["a", "b"])
    return ImageSplits(mk(20), mk(10))


def test_precomputed_replays_the_export_and_keeps_the_clean_test_split(tmp_path):
    clean = splits()
    res = ATTACKS.build("random-noise", {}).poison(clean, seed=3)
    export_poisoned(res.splits, res.manifest, tmp_path / "p")
    out = ATTACKS.build("precomputed", {"path": str(tmp_path / "p")}).poison(clean, seed=0)
    assert torch.equal(out.splits.train.images, res.splits.train.images)
    assert out.splits.test is clean.test and out.manifest == res.manifest


def test_precomputed_refuses_other_data_and_modified_files(tmp_path):
    clean = splits()
    res = ATTACKS.build("random-noise", {}).poison(clean, seed=3)
    export_poisoned(res.splits, res.manifest, tmp_path / "p")
    atk = ATTACKS.build("precomputed", {"path": str(tmp_path / "p")})
    with pytest.raises(ClpoisonError, match="source fingerprint"):
        atk.poison(splits(seed=1), seed=0)
    with np.load(tmp_path / "p" / "data.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "p" / "data.npz", **arrays)
    with pytest.raises(ClpoisonError, match="output fingerprint"):
        atk.poison(clean, seed=0)
    ATTACKS.build("precomputed", {"path": str(tmp_path / "p"), "verify": False}).poison(clean, seed=0)
    with pytest.raises(ConfigError, match="attack.params.path"):
        ATTACKS.build("precomputed", {"path": str(tmp_path)})
