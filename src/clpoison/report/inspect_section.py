"""The report's section for ``clpoison inspect`` folders (``inspect.json`` + PNGs): per encoder its PL1-norm,
verdict and suspected target, and the preview picture (mask | pattern | trigger | triggered shadow images).

Example::

    >>> import tempfile; from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "inspect.json").write_text('{"encoder": "e", "kind": "ssl", "pl1_norm": 0.05, "backdoored": true, '
    ...                                     '"threshold": 0.1, "epochs": 3, "seconds": 1.0}')
    >>> md, _, _ = inspect_section([d], Path(tempfile.mkdtemp()))
    >>> "| e | ssl | 0.0500 | backdoored" in "\\n".join(md)
    True
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError

RESULT_NAME = "inspect.json"
HEADER = ["Encoder", "Kind", "PL1-norm", "Verdict (threshold)", "Suspected target", "Epochs", "Time (s)"]


def is_inspect_dir(p: str | Path) -> bool:
    return (Path(p) / RESULT_NAME).is_file()


def _row(r: dict) -> list[str]:
    zs = (r.get("zeroshot") or {}).get("suspected_target")
    share = (r.get("zeroshot") or {}).get("triggered_share")
    return [str(r.get("encoder")), str(r.get("kind")), f"{r.get('pl1_norm', float('nan')):.4f}",
            f"{'backdoored' if r.get('backdoored') else 'clean'} ({r.get('threshold')})",
            "—" if zs is None else f"{zs} ({share:.0%} of triggered images)" if share is not None else zs,
            str(r.get("epochs")), f"{r.get('seconds', 0):.0f}"]


def inspect_section(dirs: Sequence[str | Path], plots: Path) -> tuple[list[str], list[str], list[Path]]:
    """``(Markdown lines, HTML parts, preview PNGs copied into plots)`` of the inspect folders ``dirs``."""
    from .tables import markdown_table

    rows, figs, md_figs, html_figs = [], [], [], []
    for i, d in enumerate(map(Path, dirs)):
        try:
            r = json.loads((d / RESULT_NAME).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"'{d / RESULT_NAME}' cannot be read ({type(e).__name__}); re-run clpoison inspect") from None
        rows.append(_row(r))
        if (d / "preview.png").is_file():
            dst = plots / f"inspect_{i}_preview.png"
            plots.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / "preview.png", dst)
            figs.append(dst)
            cap = f"{r.get('encoder')}: mask | pattern | trigger | triggered shadow images"
            md_figs.append(f"![{cap}](plots/{dst.name})\n")
            html_figs.append((cap, dst))
    md = ["## Backdoor inspection (DECREE)", "", markdown_table(HEADER, rows), "", *md_figs]
    h = "".join(f"<th>{html.escape(c)}</th>" for c in HEADER)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    parts = ["<h2>Backdoor inspection (DECREE)</h2>", f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"]
    for cap, p in html_figs:
        import base64

        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(cap)}' "
                     f"style='image-rendering:pixelated'><figcaption>{html.escape(cap)}</figcaption></figure>")
    return md, parts, figs
