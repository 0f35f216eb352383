"""Python API: a torch Dataset view of an ImageDataset (DataLoader-ready), and library errors that name library
arguments (overwrite=True), not command-line flags."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from clpoison.poisoned.export import export_poisoned
from clpoison.data.datasets import ImageDataset, ImageSplits
from clpoison.errors import ConfigError
from clpoison.utils.io import check_output_path


def test_torch_dataset_view():
    ds = ImageDataset(torch.arange(4 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(4, 3, 4, 4),
                      torch.tensor([0, 1, 1, 0]), ["a", "b"])
    view = ds.as_torch_dataset(lambda x: x.float() / 255)
    assert isinstance(view, Dataset) and len(view) == 4
    x, y = next(iter(DataLoader(view, batch_size=4)))
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.float32 and y.tolist() == [0, 1, 1, 0]
    assert torch.equal(view[2][0], ds.images[2].float() / 255)


def test_library_errors_do_not_name_flags(tmp_path):
    ds = ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    export_poisoned(ImageSplits(ds, ds), None, tmp_path / "p")
    with pytest.raises(ConfigError) as e:
        export_poisoned(ImageSplits(ds, ds), None, tmp_path / "p")
    assert "--" not in str(e.value) and "overwrite=True" in str(e.value) and "--overwrite" in e.value.cli_message
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as e:
        check_output_path(tmp_path / "f" / "sub", "dir")
    assert "--" not in str(e.value) and "--out" in e.value.cli_message
