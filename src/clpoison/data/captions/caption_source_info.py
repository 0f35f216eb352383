"""What ``clpoison datasets [describe NAME]`` says of the caption file sources
(:mod:`clpoison.data.captions.caption_readers`), and :func:`csv_columns` (a caption CSV's header, read without decoding
anything else)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Union

FILE_SOURCE_INFO = {  # what `clpoison datasets [describe NAME]` says of the caption file sources
    "captions-csv": {
        "summary": "image-caption pairs from a CSV/TSV (open_clip's layout: columns filepath, title)",
        "path": "data.path = the CSV/TSV; image paths relative to its folder (or absolute)",
        "options": {"data.captions.image_column": "filepath", "data.captions.caption_column": "title",
                    "data.captions.label_column": "optional class-name column (zero-shot / attacks on this data; "
                                                  "the training file may lack it when test_path is given)",
                    "data.captions.separator": "auto: tab for .tsv or a tab header, else comma",
                    "data.captions.test_path": "a separate test file (default: a seeded test_fraction hold-out)",
                    "data.captions.test_fraction": 0.1, "data.captions.on_error": "fail | skip (counted)",
                    "data.train_subset / data.subset_seed": "a seeded random subset of the training pairs"},
        "labels": "none needed for training; a labelled evaluation set can come from eval.sets",
    },
    "captions-tar": {
        "summary": "image-caption pairs from webdataset tar shards (KEY.jpg|png + KEY.txt, one caption a line)",
        "path": "data.path = a shard, a folder of *.tar or a glob",
        "options": {"data.captions.test_path": "separate test shards (default: a seeded test_fraction hold-out)",
                    "data.captions.on_error": "fail | skip (counted)",
                    "data.train_subset / data.subset_seed": "a seeded random subset of the training pairs"},
        "labels": "none (unlabelled web data); a labelled evaluation set comes from eval.sets",
    },
}


def csv_columns(path: Union[str, Path], separator: Optional[str] = None) -> list[str]:
    """The header of a caption CSV/TSV (same separator rule as :func:`read_caption_csv`); [] if unreadable."""
    try:
        with open(Path(path).expanduser(), encoding="utf-8-sig", errors="replace") as f:
            line = f.readline()
    except OSError:
        return []
    sep = separator or ("\t" if str(path).lower().endswith(".tsv") or ("\t" in line and "," not in line) else ",")
    return [h.strip() for h in next(csv.reader([line], delimiter=sep), [])]
