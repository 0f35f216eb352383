"""``clpoison report DIR... --out REPORT``: ``report.html`` (self-contained: plots embedded as base64 PNG) and
``report.md`` (plots as files in ``plots/`` beside it) of a grid folder or any run folders.

They hold the attack × defense table (clean accuracy, attack success rate, targeted success: mean ± std over
seeds and a 95 % interval, see :mod:`clpoison.report.aggregate`), the plots of :mod:`clpoison.report.figures`,
the status of every cell (a failed one with its error), and the config and environment of every run. The folder
is written as ``REPORT.partial`` and renamed at the end; it also holds the tidy table ``results.csv``.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..errors import ConfigError
from ..utils.io import atomic_write_text, check_output_path, check_replaceable
from .aggregate import INTERVALS_NOTE, Setting, settings
from .collect import GRID_NAME, Run, find_runs, write_results_table
from .figures import DOSE_AXES, asr_vs_epoch, asr_vs_rate, ca_vs_asr, crafting_trace, run_plots, targeted_bars
from .inspect_section import inspect_section, is_inspect_dir
from .tables import markdown_table

__all__ = ["write_report", "summary_table"]

CA_NAMES = {"zeroshot_top1": "zero-shot top-1", "linear_top1": "linear-probe top-1", "ca": "probe top-1",
            "knn_top1": "kNN top-1"}


def _f(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.3f}"


def _pm(s: Optional[dict]) -> str:
    return "—" if not s else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _ci(s: Optional[dict]) -> str:
    if not s or not s.get("ci"):
        return "—"
    lo, hi = s["ci"]
    return f"[{lo:.3f}, {hi:.3f}]"


def summary_table(sets: Sequence[Setting]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the attack × defense table (one row per setting)."""
    has_asr = any(s.values("asr") for s in sets)
    has_tg = any(s.values("targeted_success_rate") for s in sets)
    label_cols: list[str] = []
    for s in sets:
        label_cols += [k for k in s.label if k not in label_cols]
    if all(s.label.get("Poisons") in ("—", None) for s in sets):
        label_cols.remove("Poisons")
    header = [*label_cols, "Seeds", "Clean accuracy", "CA 95 % CI (t)"]
    if has_asr:
        header += ["Attack success rate", "ASR 95 % CI (Wilson)"]
    if has_tg:
        header += ["Targeted success", "successes per seed", "Targeted 95 % CI (Wilson)"]
    rows = []
    for s in sets:
        ca = s.summary("ca")
        row = [str(s.label.get(k, "")) for k in label_cols] + [str(len(s.runs)), _pm(ca), _ci(ca)]
        if has_asr:
            a = s.summary("asr")
            row += [_pm(a), _ci(a)]
        if has_tg:
            t = s.summary("targeted_success_rate")
            per = [f"{r.results['metrics'].get('targeted_successes')}/{r.results['metrics'].get('targeted_n')}"
                   for r in s.runs if "targeted_successes" in r.results["metrics"]]
            row += [_pm(t), ", ".join(per) or "—", _ci(t)]
        rows.append(row)
    return header, rows


def _matrix(sets: Sequence[Setting]) -> Optional[tuple[list[str], list[list[str]]]]:
    """Attack (rows) × defense (columns): "ASR / CA" means, when there is more than one defense."""
    defenses = list(dict.fromkeys(s.label["Defense"] for s in sets))
    if len(defenses) < 2:
        return None
    rows: dict[str, dict[str, str]] = {}
    for s in sets:
        key = ", ".join(str(v) for k, v in s.label.items() if k != "Defense" and v not in (None, "—"))
        a, c = s.summary("asr"), s.summary("ca")
        rows.setdefault(key, {})[s.label["Defense"]] = f"{_f(a and a['mean'])} / {_f(c and c['mean'])}"
    return (["Attack (setting)", *[f"defense: {d}" for d in defenses]],
            [[k, *[v.get(d, "—") for d in defenses]] for k, v in rows.items()])


def _ca_note(sets: Sequence[Setting]) -> str:
    key = sets[0].ca_key if sets else None
    return f"Clean accuracy is the {CA_NAMES.get(key or '', key)} of each run on the clean test split."


def _env(res: dict) -> str:
    e = res.get("environment") or {}
    return ", ".join(f"{k} {e[k]}" for k in ("clpoison", "python", "torch", "device", "threads", "platform", "gpu")
                     if k in e)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


CSS = ("body{font-family:sans-serif;max-width:1300px;margin:1em auto;color:#222}table{border-collapse:collapse;"
       "margin:.5em 0;font-size:14px}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
       "td:not(:first-child){white-space:nowrap}img{width:100%}figure{display:inline-block;width:620px;"
       "margin:0 12px 12px 0;vertical-align:top}"
       "figcaption{font-size:13px}pre{background:#f6f6f6;padding:6px;font-size:12px;overflow:auto}"
       ".failed{color:#b00}p.note{font-size:13px;color:#444}")


def _cells(runs: Sequence[Run], root: Path) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in runs:
        t = r.seconds if r.seconds is not None else ((r.results or {}).get("timings") or {}).get("total_s")
        rows.append([r.name, r.status, "—" if t is None else f"{t:.0f}", r.error or "", _rel(r.path, root)])
    return ["Cell", "Status", "Time (s)", "Error", "Folder"], rows


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def write_report(dirs: Sequence[str | Path], out: str | Path, title: Optional[str] = None,
                 overwrite: bool = False, dose_axis: str = "auto") -> Path:
    """Write ``out/report.html``, ``out/report.md``, ``out/plots/*.png`` and ``out/results.csv``; returns the
    HTML's path. ``out`` must not exist unless ``overwrite``. ``dose_axis``: the ASR plot against the poison
    ``rate``, the ``count``, or ``auto`` (:func:`~clpoison.report.figures.asr_vs_rate`)."""
    if dose_axis not in DOSE_AXES:
        raise ConfigError(f"dose axis '{dose_axis}' unknown; choose {', '.join(DOSE_AXES)}")
    out = check_output_path(out, "dir", around=list(dirs))  # inside a grid folder, but never the grid itself
    if out.exists() and not overwrite:
        raise ConfigError(f"report folder '{out}' already exists; pass overwrite=True or choose another output",
                          cli=f"report folder '{out}' already exists; pass --overwrite or choose another --out")
    check_replaceable(out, ("report.html", "report.md"), "report folder")
    inspected = [d for d in dirs if is_inspect_dir(d)]  # `clpoison inspect` folders: their own section
    runs = find_runs([d for d in dirs if d not in inspected])
    if not any(r.results for r in runs) and not inspected:
        raise ConfigError(f"no finished run in {', '.join(map(str, dirs))}; run the grid (or the runs) first")
    grids = [json.loads((Path(d) / GRID_NAME).read_text()) for d in dirs if (Path(d) / GRID_NAME).exists()]
    title = title or (grids[0]["grid"] if len(grids) == 1 else "clpoison report")
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "plots").mkdir(parents=True)
    insp_md, insp_html, _ = inspect_section(inspected, work / "plots")
    if not any(r.results for r in runs):
        return _publish(work, out, title, insp_md, insp_html)
    sets = settings(runs)
    figs = [*asr_vs_rate(sets, work / "plots", dose_axis), *ca_vs_asr(sets, work / "plots"), *targeted_bars(sets, work / "plots"),
            *asr_vs_epoch(sets, work / "plots"), *crafting_trace(sets, work / "plots")]
    for i, (t, p) in enumerate(run_plots(sets)):
        dst = work / "plots" / f"run_{i}_{p.name}"
        shutil.copyfile(p, dst)
        figs.append((t, dst))
    write_results_table(work, runs)
    header, rows = summary_table(sets)
    matrix = _matrix(sets)
    cells = _cells(runs, Path(dirs[0]))
    desc = grids[0].get("description", "") if len(grids) == 1 else ""
    notes = [_ca_note(sets), INTERVALS_NOTE]
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    finished = [r for r in runs if r.results]

    md = [f"# {title}", "", desc, "", f"{len(finished)} finished runs of {len(runs)} ({', '.join(map(str, dirs))}); "
          f"made {made}.", "", "## Results", "", markdown_table(header, rows), "", *[f"* {n}" for n in notes], ""]
    if matrix:
        md += ["### Attack × defense (attack success rate / clean accuracy, means)", "", markdown_table(*matrix), ""]
    md += ["## Plots", ""] + [f"![{t}](plots/{p.name})\n" for t, p in figs] + insp_md
    md += ["## Cells", "", markdown_table(*cells), "", "## Config and environment of every run", ""]
    for r in finished:
        md += [f"<details><summary>{r.name} — {_env(r.results)}</summary>", "", "```yaml",
               yaml.safe_dump(r.results.get("config"), sort_keys=False).rstrip(), "```", "", "</details>", ""]
    atomic_write_text(work / "report.md", "\n".join(md))

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(desc)}</p>" if desc else "",
             f"<p class='note'>{len(finished)} finished runs of {len(runs)} ({html.escape(', '.join(map(str, dirs)))});"
             f" made {made}.</p>", "<h2>Results</h2>", _html_table(header, rows),
             *[f"<p class='note'>{html.escape(n)}</p>" for n in notes]]
    if matrix:
        parts += ["<h3>Attack × defense (attack success rate / clean accuracy, means)</h3>", _html_table(*matrix)]
    parts.append("<h2>Plots</h2>")
    for t, p in figs:
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(t)}' "
                     f"data-file='plots/{html.escape(p.name)}'><figcaption>{html.escape(t)}</figcaption></figure>")
    parts += [*insp_html, "<h2>Cells</h2>", _html_table(*cells), "<h2>Config and environment of every run</h2>"]
    for r in finished:
        parts.append(f"<details><summary>{html.escape(r.name)} — {html.escape(_env(r.results))}</summary><pre>"
                     f"{html.escape(yaml.safe_dump(r.results.get('config'), sort_keys=False))}</pre></details>")
    parts.append("</body></html>")
    atomic_write_text(work / "report.html", "\n".join(parts))
    return _publish(work, out)


def _publish(work: Path, out: Path, title: str = "", md: Sequence[str] = (), parts: Sequence[str] = ()) -> Path:
    """Rename ``work`` to ``out``; with ``md`` / ``parts`` first write them as the whole report (inspect folders
    only)."""
    if md:
        atomic_write_text(work / "report.md", "\n".join([f"# {title}", "", *md]))
        atomic_write_text(work / "report.html", "\n".join([
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>", *parts, "</body></html>"]))
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return out / "report.html"
