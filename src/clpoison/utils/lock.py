"""One writer per output: an exclusive, non-blocking ``fcntl.flock`` on a lock file beside the output.

``OUT`` (a run folder or a poisoned-dataset export) is written by one process at a time: the writer holds
``.OUT.lock`` (in the same parent folder, holding its pid) while it works in ``OUT.partial`` / ``.OUT.partial``
and renames the result into place. A second command on the same ``OUT`` fails at once with one
:class:`~clpoison.errors.ConfigError` line naming the other process. The kernel drops the lock when the holder
dies (``kill -9`` included), so a partial output found while holding the lock belongs to a dead process: a run
resumes it, an export removes it (:func:`stale_partials`).

Example::

    >>> import tempfile; from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> with OutputLock(out):
    ...     try:
    ...         OutputLock(out).acquire()
    ...     except Exception as e:
    ...         print(type(e).__name__)
    ConfigError
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """Exclusive lock on output ``out`` (context manager); :meth:`acquire` raises one line if another process holds it."""

    def __init__(self, out: str | os.PathLike, flag: str = "--out") -> None:
        self.out, self.flag = Path(out), flag
        self.path = lock_path(out)
        self.fd: Optional[int] = None
        self.created: list[Path] = []  # parent folders this lock created (removed again if left empty)

    def acquire(self) -> "OutputLock":
        self.created = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # read-only or virtual file system, no permission: one line, before any work
                self._remove_created()
                msg = f"'{self.out}' cannot be written ({e.strerror}: '{e.filename}'); choose another"
                raise ConfigError(f"{msg} output", cli=f"{msg} {self.flag}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                msg = f"'{self.out}' is being written by another clpoison process (pid {holder}); wait for it to finish " \
                      "or choose another"
                raise ConfigError(f"{msg} output", cli=f"{msg} {self.flag}") from None
            try:  # the previous holder may have unlinked the file between our open and flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self.created:  # innermost first; a failed command leaves no empty folders behind
            try:
                d.rmdir()
            except OSError:
                break

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def stale_partials(out: str | os.PathLike) -> list[Path]:
    """Hidden export partials ``.OUT.*partial`` beside ``out`` (left by a killed export; only call while holding
    the lock, when no live process can own them)."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.glob(f".{out.name}.*partial") if p.is_dir())
