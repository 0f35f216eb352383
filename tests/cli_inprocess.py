"""``clpoison ARGS`` in the test's own process (:func:`clpoison.cli.main`), answered like ``subprocess.run``
(``returncode``, ``stdout``, ``stderr``): for the commands of an end-to-end test that need no process of their own
(no kill -9, no torchrun, no worker pool), each one spared an interpreter start and a torch import. Relative paths
resolve against the current directory (``monkeypatch.chdir``); ``tests/test_cli.py`` keeps the real
``python -m clpoison`` process."""

from __future__ import annotations

import subprocess


def clpoison_here(capsys, *args) -> subprocess.CompletedProcess:
    from clpoison.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), rc, out.out, out.err)
