"""Atomic file output: results are written to a temporary name and renamed into place."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _tmp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"before-replace {path.name}")
        os.replace(tmp, path)
        fault_point(f"after-replace {path.name}")
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _disk_full(e, path)
        raise


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
    fd, tmp = _tmp_beside(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:  # on disk before it replaces the previous checkpoint (disk full: old one intact)
            os.fsync(f.fileno())
        fault_point(f"before-replace {path.name}")
        os.replace(tmp, path)
        fault_point(f"after-replace {path.name}")
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _disk_full(e, path)
        raise


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


def check_output_path(path: str | os.PathLike, kind: str = "file", flag: str = "--out") -> Path:
    """``path`` as a Path if it can be written as a ``kind`` ("file" or "dir"); else one :class:`ConfigError` line
    (a parent that is a file, a file where a directory goes or the reverse) — checked before any work is done. The
    message names ``path``; its ``cli_message`` names ``flag`` (the command-line option that gave it)."""
    from ..errors import ConfigError

    path = Path(path)

    def fail(lib: str, cli: str) -> None:  # the library names the output, the CLI its flag
        raise ConfigError(lib, cli=cli)

    for parent in path.absolute().parents:
        if parent.exists() and not parent.is_dir():
            fail(f"output '{path}': '{parent}' is a file, not a directory; choose another output path",
                 f"{flag} '{path}': '{parent}' is a file, not a directory; choose another {flag}")
    if kind == "file" and path.is_dir():
        fail(f"output '{path}' is a directory; name a file to write",
             f"{flag} '{path}' is a directory; name a file to write")
    if kind == "dir" and path.exists() and not path.is_dir():
        fail(f"output '{path}' is an existing file, not an output directory; choose another output path",
             f"{flag} '{path}' is an existing file, not an output directory; choose another {flag}")
    return path
