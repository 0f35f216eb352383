"""Image–caption pairs in **webdataset tar shards** (``captions-tar``): shard lists (a shard, a brace list
``shard-{000000..000099}.tar``, a folder of ``*.tar``, a glob), the samples of a list of shards (an image member
``.jpg/.jpeg/.png/.webp/.bmp`` and its captions ``.txt`` (one a line) or ``.json``), and a whole set of shards read
into a :class:`~clpoison.data.captions.CaptionDataset`, and the shard writer (:func:`write_caption_shards`: ``clpoison
poison --format wds``, an attack's poison shards on a stream). Streaming them without a full load:
:mod:`clpoison.data.shards.shard_stream`. The CSV reader and the source registry:
:mod:`clpoison.data.captions.caption_readers`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from ...errors import ConfigError, DataError
from ..image_readers import decode_image
from .caption_dataset import CaptionDataset
from .caption_rows import IMAGE_SUFFIXES, RowErrors, rows_dataset


def shard_paths(spec: Union[str, Path, list]) -> list[Path]:
    """A shard, a brace list (``shard-{000000..000099}.tar``, webdataset's notation), a folder of ``*.tar``, a glob,
    or a list of those → shard paths (error when none)."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    if any("{" in str(s) for s in specs):
        try:
            from braceexpand import braceexpand
        except ImportError:
            raise ConfigError(f"data.path {spec} is a brace list; pip install 'clpoison[stream]' (braceexpand)") from None
        specs = [x for s in specs for x in braceexpand(str(s))]
    out: list[Path] = []
    for s in specs:
        s = str(Path(str(s)).expanduser())
        if os.path.isdir(s):
            out += sorted(Path(s).glob("*.tar"))
        elif any(ch in s for ch in "*?["):
            out += sorted(Path(x) for x in glob.glob(s))
        elif os.path.isfile(s):
            out.append(Path(s))
        else:
            raise DataError(f"tar shard '{s}' does not exist; point data.path at a shard, a folder of .tar or a glob")
    if not out:
        raise DataError(f"no tar shards found at {spec}; expected files like shard-000000.tar")
    return out


def _json_caption(raw: bytes) -> str:
    """The caption of a webdataset ``KEY.json`` (img2dataset writes ``caption``; ``text`` / ``title`` also read)."""
    d = json.loads(raw.decode("utf-8"))  # StopIteration when no key holds a caption
    return next(d[k] for k in ("caption", "text", "title") if isinstance(d, dict) and isinstance(d.get(k), str) and d[k].strip())


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: their own streams detect a cut


def tar_end_present(shard: Union[str, Path], offset: int) -> bool:
    """Whether an uncompressed tar file read up to ``offset`` (where the reader stopped) holds the zero block that
    ends an archive there; a file cut at a member boundary has none (tarfile then stops silently). A compressed or
    unreadable file counts as present (its decompressor reports a cut itself)."""
    try:
        with open(shard, "rb") as f:
            if f.read(6).startswith(COMPRESSED_MAGIC):
                return True
            f.seek(offset)
            block = f.read(512)
    except OSError:
        return True
    return len(block) == 512 and not any(block)


def iter_shard_samples(paths: list[Path], on_error: str = "fail", errors: Optional[RowErrors] = None) -> Iterator[dict]:
    """Stream samples ``{"key", "shard", "index", "image": bytes, "ext", "captions": [str]}`` from webdataset-layout
    shards, reading each archive sequentially (works on pipes / object-store streams as well as files). ``index``:
    the sample's position in its shard among the keys with an image member (what
    :func:`~clpoison.data.shards.shard_stream.shard_counts` counts), also for samples skipped before it."""
    errors = errors or RowErrors(on_error)
    seen = [0]  # keys with an image member in the current shard

    def flush(shard: Path, key: Optional[str], parts: dict) -> Optional[dict]:
        if key is None:
            return None
        where = f"{shard}:{key}"
        img_ext = next((e for e in IMAGE_SUFFIXES if e in parts), None)
        if img_ext is None:
            errors("missing_image", where, f"sample has no image ({'/'.join(IMAGE_SUFFIXES)}); members: {sorted(parts)}")
            return None
        index = seen[0]
        seen[0] += 1
        if "txt" not in parts and "json" not in parts:
            errors("empty_caption", where, "sample has no .txt or .json caption")
            return None
        try:
            text = parts["txt"].decode("utf-8") if "txt" in parts else _json_caption(parts["json"])
        except UnicodeDecodeError:
            errors("non_utf8", f"{where}.txt", "caption is not valid UTF-8")
            return None
        except (ValueError, StopIteration):
            errors("empty_caption", f"{where}.json", "the .json holds no caption (keys caption, text or title)")
            return None
        caps = [c.strip() for c in text.splitlines() if c.strip()]
        if not caps:
            errors("empty_caption", f"{where}.txt", "empty caption")
            return None
        cls = parts.get("cls", b"").decode("utf-8", "replace").strip()
        return {"key": key, "shard": str(shard), "index": index, "image": parts[img_ext], "ext": img_ext, "captions": caps,
                "cls": int(cls) if cls.lstrip("-").isdigit() else None}

    for shard in paths:
        seen[0] = 0
        try:
            tf = tarfile.open(shard, mode="r|*")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"tar shard '{shard}' cannot be opened ({type(e).__name__}); is it a tar file?") from None
        key, parts = None, {}
        try:
            for m in tf:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                if "." not in base:
                    continue
                k, ext = os.path.join(os.path.dirname(m.name), base.split(".", 1)[0]), base.split(".", 1)[1].lower()
                if k != key:
                    s = flush(shard, key, parts)
                    if s is not None:
                        yield s
                    key, parts = k, {}
                f = tf.extractfile(m)
                parts[ext] = f.read() if f is not None else b""
            if not tar_end_present(shard, tf.offset):
                errors("corrupt_shard", f"{shard}", "tar shard is truncated (it ends without the end-of-archive blocks "
                       f"after {tf.offset} bytes)")
        except (tarfile.TarError, OSError, EOFError) as e:
            errors("corrupt_shard", f"{shard}", f"tar shard is truncated or corrupt ({type(e).__name__})")
        finally:
            tf.close()
        s = flush(shard, key, parts)
        if s is not None:
            yield s


def read_caption_shards(
    spec: Union[str, Path, list], on_error: str = "fail", image_size: Optional[int] = 32, name: str = "shards",
    cls_labels: bool = False,
) -> tuple[CaptionDataset, dict]:
    """Decode every sample of the shards into a resident :class:`CaptionDataset`; returns it and the skip counts.
    ``cls_labels``: when every sample has a ``KEY.cls`` (class index; ``clpoison poison --format wds`` writes it),
    keep those indices as ``labels`` — without class names, which the shards do not hold (``clpoison scan`` takes
    them from the manifest to check an export's fingerprint); training never reads them."""
    errors = RowErrors(on_error)
    images, captions, cls = [], [], []
    for s in iter_shard_samples(shard_paths(spec), errors=errors):
        try:
            images.append(decode_image(io.BytesIO(s["image"]), image_size))
        except DataError:
            errors("corrupt_image", f"{s['shard']}:{s['key']}.{s['ext']}", "image is unreadable or corrupt")
            continue
        captions.append(s["captions"])
        cls.append(s["cls"])
    if not images:
        raise DataError(f"tar shards {spec} yield no usable image–caption pair (skipped: {dict(errors.counts)})")
    ds = rows_dataset(images, captions, [None] * len(images), name, False)
    if cls_labels and all(c is not None for c in cls):
        ds.labels = torch.tensor(cls, dtype=torch.int64)
    return ds, errors.report(str(spec))


def png_bytes(img: torch.Tensor, size: Optional[torch.Tensor]) -> bytes:
    from PIL import Image

    if size is not None:
        img = img[:, : int(size[0]), : int(size[1])]
    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    return buf.getvalue()


def index_digits(n: int) -> int:
    return max(6, len(str(n)))


def image_file(ds: Any, i: int, copies: Optional[dict[int, str]]) -> tuple[bytes, str]:
    """``(bytes, extension)`` of image ``i``: its untouched source file byte for byte, else a PNG of its pixels."""
    if copies and i in copies:
        src = Path(copies[i])
        return src.read_bytes(), src.suffix.lower().lstrip(".") or "png"
    return png_bytes(ds.images[i], None if getattr(ds, "sizes", None) is None else ds.sizes[i]), "png"


def write_caption_shards(root: Path, ds: CaptionDataset, split: str, shard_size: int = 10000,
                         copies: Optional[dict[int, str]] = None) -> None:
    """``root/split-000000.tar``, ...: webdataset samples ``NNNNNN.png`` (or the untouched source file's own
    extension, byte for byte) + ``.txt`` (+ ``.cls``)."""
    width = index_digits(len(ds))
    for s, start in enumerate(range(0, max(len(ds), 1), shard_size)):
        with tarfile.open(root / f"{split}-{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(start, min(start + shard_size, len(ds))):
                data, ext = image_file(ds, i, copies)
                members = {ext: data, "txt": "\n".join(ds.captions[i]).encode("utf-8")}
                if ds.labels is not None and int(ds.labels[i]) >= 0:
                    members["cls"] = str(int(ds.labels[i])).encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:0{width}d}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644  # reproducible archives
                    tf.addfile(info, io.BytesIO(data))
