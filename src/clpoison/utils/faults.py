"""Fault injection for the fault test (``tests/test_faults.py``): named *fault points* sit where a kill would hurt
most — before and after each atomic replace, after every training step and log write, just before a run or an
export is renamed into place.

Off unless the environment asks: ``CLPOISON_FAULT_LOG=FILE`` appends ``N name`` for every point reached, and
``CLPOISON_FAULT_AT=N`` kills the process with SIGKILL (as ``kill -9`` would) at the N-th point.
``CLPOISON_FAULT_RANK=R`` limits both to the process whose ``RANK`` is R (several processes under torchrun).
"""

from __future__ import annotations

import os
import signal

_count = 0


def fault_point(name: str) -> None:
    """Count (and maybe log) one fault point; SIGKILL this process if it is the one ``CLPOISON_FAULT_AT`` names."""
    at, log = os.environ.get("CLPOISON_FAULT_AT"), os.environ.get("CLPOISON_FAULT_LOG")
    if not at and not log:
        return
    only = os.environ.get("CLPOISON_FAULT_RANK")  # under torchrun: count (and kill) on this rank only
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    global _count
    _count += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_count} {name}\n")
    if at and _count == int(at):
        os.kill(os.getpid(), signal.SIGKILL)
