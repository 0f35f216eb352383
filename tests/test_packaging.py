"""Packaging a user can trust: one version source, LICENSE + py.typed shipped, dependencies declared, files
written with the user's umask (not mkstemp's 0600)."""

import os
import re
import stat
from pathlib import Path

import pytest

import clpoison
from clpoison.utils.io import atomic_torch_save, atomic_write_text, current_umask

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_source():
    text = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"', text, re.M)[1]
    assert version not in (ROOT / "src/clpoison/__init__.py").read_text()  # read from the package metadata
    assert isinstance(clpoison.__version__, str)


def test_license_typed_changelog():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "src/clpoison/py.typed").exists() and (ROOT / "CHANGELOG.md").exists()
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and '"py.typed"' in text


def test_imported_third_party_packages_are_declared():
    text = (ROOT / "pyproject.toml").read_text().lower()
    dist = {"yaml": "pyyaml", "pil": "pillow", "sklearn": "scikit-learn"}
    found = set()
    for p in (ROOT / "src/clpoison").rglob("*.py"):
        for m in re.finditer(r"^\s*(?:from|import) ([a-zA-Z_]\w*)", p.read_text(), re.M):
            found.add(m[1])
    stdlib = {"__future__", "argparse", "collections", "contextlib", "copy", "csv", "dataclasses", "errno", "glob",
              "hashlib", "importlib", "io", "itertools", "json", "math", "os", "pathlib", "pickle", "platform",
              "random", "re", "shutil", "signal", "statistics", "sys", "tarfile", "tempfile", "time", "types",
              "typing", "warnings", "zipfile", "zlib", "functools", "subprocess", "threading", "fcntl", "socket",
              "string", "textwrap", "traceback", "abc", "enum", "heapq", "bisect", "struct", "uuid", "datetime",
              "concurrent", "queue", "atexit", "inspect", "operator", "numbers", "unicodedata", "base64", "gzip",
              "the", "base", "clpoison", "multiprocessing", "logging", "weakref", "ctypes", "html", "difflib"}
    third = {m for m in found - stdlib if not (ROOT / "src/clpoison" / m).exists()}
    missing = [m for m in third if f'"{dist.get(m.lower(), m.lower())}' not in text]
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_get_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save({"a": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
