"""Atomic file output: results are written to a temporary name and renamed into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from .faults import fault_point


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_beside(path: Path) -> tuple[int, str]:
    """A temporary file beside ``path`` with the permissions a plain ``open(path, "w")`` would give (mkstemp
    makes it 0600; the user's umask decides instead)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())
    return fd, tmp


def _write_replace(path: Path, write: Callable[[int, str], None]) -> None:
    """Write ``path`` through a temporary file beside it: ``write(fd, tmp)`` fills and fsyncs the temporary file
    (and closes ``fd``), which then replaces ``path``. On any failure the temporary file is removed and the previous
    file is intact (a full disk: one line)."""
    fd, tmp = _tmp_beside(path)
    try:
        write(fd, tmp)
        fault_point(f"before-replace {path.name}")
        os.replace(tmp, path)
        fault_point(f"after-replace {path.name}")
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _disk_full(e, path)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(fd: int, tmp: str) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _write_replace(Path(path), write)


def _disk_full(e: BaseException, path: Path) -> None:
    """Turn a full disk into one line (the temporary file is already gone; the previous file is intact)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        from ..errors import DataError

        raise DataError(f"no space left on the device while writing '{path}'; the previous version is intact — free "
                        "some space and re-run the command (it resumes)") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, numpy scalars, tuples and paths into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "shape", None) == ():
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)

    def write(fd: int, tmp: str) -> None:
        os.close(fd)
        fault_point(f"writing {path.name}")  # a kill here leaves a 0-byte temporary file (remove_stale_temps)
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:  # on disk before it replaces the previous checkpoint (disk full: old one intact)
            os.fsync(f.fileno())

    _write_replace(path, write)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256()
    h.update(str(tuple(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def check_output_path(path: str | os.PathLike, kind: str = "file", flag: str = "--out",
                      inputs: Iterable[Any] = (), around: Iterable[Any] = ()) -> Path:
    """``path`` as a Path if it can be written as a ``kind`` ("file" or "dir"); else one :class:`ConfigError` line
    — checked before any work is done. The one output guard of every command that writes: it refuses a parent that
    is a file, a file where a directory goes or the reverse, the working folder or one above it (``.``, ``/``), a
    symbolic link, a place that cannot be written (``/proc``, a read-only folder), and an output that is, contains
    or lies inside one of ``inputs`` (paths among any values: :func:`input_paths`) whatever ``overwrite`` says;
    ``around`` are inputs the output may lie inside (a report inside its grid folder) but neither be nor contain.
    The message names ``path``; its ``cli_message`` names ``flag`` (the command-line option that gave it)."""
    from ..errors import ConfigError

    path = Path(path)

    def fail(lib: str, cli: Optional[str] = None) -> None:  # the library names the output, the CLI its flag
        raise ConfigError(f"output '{path}' {lib}", cli=f"{flag} '{path}' {cli or lib}")

    real, cwd = _real(path), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        fail(f"is the working folder or one above it ('{real}'); name a new folder, e.g. runs/NAME",
             f"is the working folder or one above it ('{real}'); name a new folder, e.g. {flag} runs/NAME")
    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            fail(f"lies under '{parent}', a file, not a directory; choose another output path",
                 f"lies under '{parent}', a file, not a directory; choose another {flag}")
    if kind == "file" and path.is_dir() and not path.is_symlink():
        fail("is a directory; name a file to write")
    if kind == "dir" and path.exists() and not path.is_dir():
        fail("is an existing file, not an output directory; choose another output path",
             f"is an existing file, not an output directory; choose another {flag}")
    for p in (path, path.with_name(path.name + ".partial")) if kind == "dir" else (path,):
        if p.is_symlink():
            fail(f"is or has a symbolic link ('{p}'); name a real folder (the link's target: '{os.path.realpath(p)}')")
    if any(real == v or v in real.parents for v in VIRTUAL_FS):
        fail(f"lies in {next(v for v in VIRTUAL_FS if v == real or v in real.parents)}, which holds no files; "
             "choose a folder on a disk")
    for inp, inside_ok in [*((p, False) for p in input_paths(inputs)), *((p, True) for p in input_paths(around))]:
        how = ("is" if inp == real else "contains" if real in inp.parents else
               "lies inside" if inp in real.parents and (not inside_ok or kind == "file" and real.exists()) else None)
        if how:
            fail(f"{how} the input '{inp}'; an output never replaces its inputs — choose another output path",
                 f"{how} the input '{inp}'; an output never replaces its inputs — choose another {flag}")
    existing = next(p for p in [real, *real.parents] if p.exists())
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK) or (existing.is_file() and not os.access(existing, os.W_OK)):
        fail(f"cannot be written ('{existing}' is not writable); choose another output path",
             f"cannot be written ('{existing}' is not writable); choose another {flag}")
    return path


VIRTUAL_FS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _real(path: Path) -> Path:
    """``path`` made absolute with every symbolic link and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(path))


def input_paths(values: Any) -> list[Path]:
    """The existing files and folders named among ``values`` (strings, paths, ``key=value`` items, nested dicts and
    lists, e.g. a config): the inputs an output must not touch. A file inside a ``clpoison poison`` export stands
    for its export folder; the working folder and those above it are never inputs (a value of ``.`` names none)."""
    found: list[Path] = []
    cwd = Path.cwd().resolve()

    def visit(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple, set)):
            for x in v:
                visit(x)
        elif isinstance(v, (str, os.PathLike)) and str(v):
            for cand in {str(v), str(v).split("=", 1)[-1]}:
                try:
                    if not cand or len(cand) > 4096 or not os.path.lexists(cand):
                        continue
                except (OSError, ValueError):
                    continue
                real = _real(Path(cand))
                if real.is_file() and any((real.parent / m).exists() for m in ("manifest.json", "SHA256SUMS")):
                    real = real.parent  # a file of an export: the export folder is the input
                if real != cwd and real not in cwd.parents and real not in found:
                    found.append(real)

    visit(values)
    return found


def check_replaceable(path: str | os.PathLike, markers: Iterable[str], what: str, flag: str = "--out") -> None:
    """With ``overwrite``, ``path`` is replaced only if it is empty or an earlier output of the same kind (holds one
    of ``markers``); anything else (a data folder, a home folder) is refused with one line."""
    from ..errors import ConfigError

    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not any((path / m).exists() for m in markers):
        msg = f"'{path}' is not a {what} (no {' / '.join(markers)}); overwrite replaces only an earlier {what}"
        raise ConfigError(f"{msg}; choose another output path", cli=f"{msg}; choose another {flag}")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.NAME.*.tmp``) that a killed writer left in ``folder`` and below, so a resumed
    output never publishes them; only call while holding the output's lock. Returns what was removed."""
    root = Path(folder)
    stale = [p for p in root.rglob(".*.tmp") if p.is_file() and not p.is_symlink()] if root.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
