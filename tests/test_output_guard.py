"""The one output guard (clpoison.utils.io.check_output_path) and what goes with it (issue 29): an output never is,
contains or lies inside one of its inputs, whatever ``overwrite`` says; ``.``, ``/``, virtual file systems and
symbolic links are refused before any work; ``--overwrite`` replaces only an earlier output of its kind; a killed
writer's temporary files are removed when the lock is taken; a closed pipe ends quietly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import clpoison
from clpoison.errors import ConfigError
from clpoison.utils.io import check_output_path, check_replaceable, input_paths, remove_stale_temps


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.npz").write_bytes(b"x")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("{}")
    (tmp_path / "export" / "data.npz").write_bytes(b"x")
    (tmp_path / "grid").mkdir()
    return tmp_path


@pytest.mark.parametrize("out, inputs, how", [
    ("data", ["data/x.npz"], "contains the input"),
    ("data/x.npz", ["data/x.npz"], "is the input"),
    ("data", ["data"], "is the input"),
    ("data/run", ["data"], "lies inside the input"),
    ("export/run", ["export/data.npz"], "lies inside the input"),  # a file of an export stands for the export
    (".", [], "working folder"),
    ("/", [], "working folder"),
    ("data/..", [], "working folder"),
    ("/proc/x", [], "/proc"),
])
def test_refused_outputs(tree, out, inputs, how):
    with pytest.raises(ConfigError, match=how) as e:
        check_output_path(out, "file" if out.endswith(".npz") else "dir", inputs=inputs)
    assert "\n" not in str(e.value) and e.value.cli_message.startswith(f"--out '{out}'")


def test_around_allows_a_new_folder_inside_but_never_the_input_itself(tree):
    assert check_output_path("grid/report", "dir", around=["grid"]) == Path("grid/report")
    with pytest.raises(ConfigError, match="is the input"):
        check_output_path("grid", "dir", around=["grid"])
    (tree / "grid" / "results.csv").write_text("a\n")
    with pytest.raises(ConfigError, match="lies inside"):  # a file output never replaces a file of its input
        check_output_path("grid/results.csv", "file", around=["grid"])


def test_symlinked_output_refused_before_work(tree):
    (tree / "link").symlink_to(tree / "data")
    with pytest.raises(ConfigError, match="symbolic link"):
        check_output_path("link", "dir")
    (tree / "run.partial").symlink_to(tree / "data")
    with pytest.raises(ConfigError, match="symbolic link"):
        check_output_path("run", "dir")


def test_input_paths_ignore_names_and_the_working_folder(tree):
    found = input_paths({"data": {"name": "cifar10-subset", "path": "data/x.npz"}, "x": ["."], "y": "k=export"})
    assert found == [(tree / "data" / "x.npz").resolve(), (tree / "export").resolve()]


def test_overwrite_replaces_only_an_earlier_output(tree):
    check_replaceable(tree / "grid", ["results.json"], "run folder")  # empty: fine
    (tree / "grid" / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a run folder"):
        check_replaceable(tree / "grid", ["results.json"], "run folder")
    (tree / "grid" / "results.json").write_text("{}")
    check_replaceable(tree / "grid", ["results.json"], "run folder")


def test_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".checkpoint.pt.abc.tmp", tmp_path / "sub" / ".metrics.jsonl.x.tmp"]
    for p in stale:
        p.write_bytes(b"")
    (tmp_path / "keep.tmp").write_text("not ours")
    assert sorted(remove_stale_temps(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.tmp"]


def test_a_closed_pipe_ends_quietly(tmp_path):
    src = str(Path(clpoison.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(f"'{sys.executable}' -m clpoison presets simclr-small --resolved | head -1", shell=True,
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() and "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
