"""`clpoison report` and its pieces on hand-written results (no training): interval functions against
closed-form / scipy reference values, settings and their statistics, the HTML / Markdown report (parses, embeds and
references every plot), a run's report.md, and the per-epoch log line used when stderr is not a terminal."""

import json
import math
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from clpoison.engine.trainer import epoch_line, progress_bar_on
from clpoison.errors import ConfigError
from clpoison.report.aggregate import settings, t_interval, wilson_interval
from clpoison.report.collect import find_runs, flatten_results
from clpoison.report.document import write_report
from clpoison.report.figures import _epoch_curve, asr_vs_epoch, use_log_x
from clpoison.report.run_report import run_markdown

Z = 1.959963984540054


def wilson_closed_form(k, n, z=Z):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(0, 16), (1, 16), (13, 16), (16, 16), (54, 912), (905, 912), (3, 10)])
def test_wilson_interval_against_references(k, n):
    lo, hi = wilson_interval(k, n)
    ref = wilson_closed_form(k, n)
    assert lo == pytest.approx(max(0.0, ref[0]), abs=1e-12) and hi == pytest.approx(min(1.0, ref[1]), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_reference_values():
    # 13 of 16 (Carlini targeted, one seed) and 0 of 16 by hand: p̂ = 0.8125, z = 1.96
    assert wilson_interval(13, 16) == pytest.approx((0.5699, 0.9341), abs=1e-4)
    assert wilson_interval(0, 16) == pytest.approx((0.0, 0.1936), abs=1e-4)


def test_t_interval_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    xs = [0.5457, 0.5575, 0.5457]
    m, se = statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(3)
    assert t_interval(xs) == pytest.approx(stats.t.interval(0.95, 2, loc=m, scale=se), abs=1e-12)
    assert t_interval([0.5]) is None
    # t(0.975, 2) = 4.302653 (table value)
    assert t_interval([0.0, 1.0, 2.0])[1] == pytest.approx(1.0 + 4.302653 / math.sqrt(3), abs=1e-6)


def fake_run(folder: Path, name: str, seed: int, attack: str, rate, hits: int, n: int = 900, zs: float = 0.5,
             targeted=None, history=None):
    cfg = {"name": name, "seed": seed, "method": {"name": "clip"}, "defense": {"name": "none", "params": {}},
           "attack": {"name": attack, "params": {} if rate is None else {"poison_rate": rate, "target": "airplane"}},
           "train": {"epochs": 4, "progress": False}}
    metrics = {"zeroshot_top1": zs, "asr": hits / n, "asr_hits": hits, "asr_n": n, "targeted_ci95": [0.1, 0.2]}
    if targeted is not None:
        metrics.update(targeted_success_rate=targeted / 16, targeted_successes=targeted, targeted_n=16)
    res = {"name": name, "metrics": metrics, "config": cfg, "timings": {"total_s": 10.0},
           "environment": {"clpoison": "0.1.0", "torch": "2.13.0", "device": "cpu"},
           "history": history or [{"epoch": e, "loss": 1.0} for e in range(1, 5)]}
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(res))


@pytest.fixture
def runs_dir(tmp_path):
    d = tmp_path / "runs"
    for s in (0, 1):
        fake_run(d, f"clean_s{s}", s, "carlini-control", None, 60 + 10 * s, targeted=s)
        for r, hits in ((0.001, 100), (0.01, 800), (0.02, 890)):
            hist = [{"epoch": e, "loss": 1.0, **({"eval_asr": hits / 900 * e / 4} if e < 4 else {})} for e in (1, 2, 3, 4)]
            fake_run(d, f"backdoor_{r}_s{s}", s, "carlini-backdoor", r, hits + s, zs=0.5 + 0.01 * s, history=hist)
        fake_run(d, f"targeted_s{s}", s, "carlini-targeted", None, 70, targeted=13 + s)
    return d


def test_epoch_plots_show_knn_asr_delta_cos_and_the_mismatched_control(tmp_path):
    d = tmp_path / "runs"
    for s in (0, 1):
        hist = [{"epoch": e, "loss": 1.0, "eval_asr": 0.1 * e + s, "eval_asr_knn": 0.2 * e, "eval_delta_cos": 0.01 * e,
                 "eval_asr_mismatched": 0.05 + s} for e in (1, 2, 3)] + [{"epoch": 4, "loss": 1.0}]
        fake_run(d, f"ctrl_s{s}", s, "ctrl", 0.05, 450, history=hist)
    (setting,) = settings(find_runs([d]))
    assert _epoch_curve(setting, "asr_knn") == ([1, 2, 3], pytest.approx([0.2, 0.4, 0.6]))
    assert _epoch_curve(setting, "asr_mismatched") == ([1, 2, 3], pytest.approx([0.55] * 3))
    assert _epoch_curve(setting, "asr") == ([1, 2, 3, 4], pytest.approx([0.6, 0.7, 0.8, 0.5]))  # + the final ASR
    figs = asr_vs_epoch([setting], tmp_path / "plots")
    assert [p.name for _, p in figs] == ["asr_vs_epoch.png", "asr_knn_vs_epoch.png", "delta_cos_vs_epoch.png"]
    assert all(p.stat().st_size > 1000 for _, p in figs)


def test_settings_statistics(runs_dir):
    sets = settings(find_runs([runs_dir]))
    assert len(sets) == 5 and all(len(s.runs) == 2 for s in sets)
    bd = next(s for s in sets if s.label["Poisons"] == "1 %")
    a = bd.summary("asr")
    assert a["mean"] == pytest.approx((800 / 900 + 801 / 900) / 2) and a["std"] == pytest.approx(statistics.stdev([800 / 900, 801 / 900]))
    assert a["ci_kind"] == "wilson" and a["ci"] == pytest.approx(wilson_closed_form(1601, 1800))
    ca = bd.summary("ca")
    assert ca["ci_kind"] == "t" and ca["mean"] == pytest.approx(0.505)
    tg = next(s for s in sets if s.label["Attack"] == "carlini-targeted").summary("targeted_success_rate")
    assert tg["ci"] == pytest.approx(wilson_closed_form(27, 32))
    clean = next(s for s in sets if s.label["Poisons"] == "0")
    assert clean.label["Attack"].startswith("none (clean-model control")
    assert use_log_x([0.1, 1.0, 2.0]) and not use_log_x([0.5, 1.0, 2.0])


def test_flat_row_keeps_scalars_and_short_lists():
    row = flatten_results({"metrics": {"asr": 0.5, "preds": list(range(10)), "ci": [0.1, 0.2], "ok": True},
                           "config": {"seed": 3, "attack": {"name": "x", "params": {"poison_rate": 0.01}}}})
    assert row == {"seed": 3, "attack.name": "x", "attack.params.poison_rate": 0.01, "metrics.asr": 0.5,
                   "metrics.ci": "[0.1, 0.2]", "metrics.ok": 1}


class _Html(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_and_markdown(runs_dir, tmp_path):
    html = write_report([runs_dir], tmp_path / "rep", title="Carlini test")
    rep = tmp_path / "rep"
    plots = sorted(p.name for p in (rep / "plots").glob("*.png"))
    assert plots == ["asr_vs_epoch.png", "asr_vs_poison_rate.png", "ca_vs_asr.png", "targeted_success.png"]
    p = _Html()
    p.feed(html.read_text())
    assert sorted(Path(i["data-file"]).name for i in p.imgs) == plots
    assert all(i["src"].startswith("data:image/png;base64,") and len(i["src"]) > 1000 for i in p.imgs)
    text = " ".join(p.text)
    assert "Attack success rate" in text and "Wilson" in text and "zero-shot top-1" in text
    md = (rep / "report.md").read_text()
    assert all(f"(plots/{f})" in md for f in plots)
    assert "| carlini-backdoor | none | 1 % | 2 | 0.505 ± 0.007 |" in md
    assert "13/16, 14/16" in md  # targeted successes per seed
    assert md.count("<details>") == 10 and (rep / "results.csv").read_text().count("\n") == 11
    with pytest.raises(ConfigError, match="already exists"):
        write_report([runs_dir], rep)
    write_report([runs_dir], rep, overwrite=True)
    with pytest.raises(ConfigError, match="not a grid folder"):
        write_report([tmp_path / "nothing"], tmp_path / "rep2")
    assert not (tmp_path / "rep2").exists() and not (tmp_path / "rep2.partial").exists()


def test_report_cli_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clpoison", "report", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a grid folder" in r.stderr


def test_run_markdown_is_short_and_complete():
    hist = [{"epoch": e, "loss": 2.0 / e, "eval_asr": 0.1 * e} for e in range(1, 101)]
    md = run_markdown({"name": "r", "config": {"seed": 1, "method": {"name": "clip"}, "attack": {"name": "carlini-backdoor"},
                                                "data": {"name": "cifar10-subset"}, "train": {"epochs": 100}},
                       "metrics": {"asr": 0.25, "asr_n": 4, "targeted_predictions": [1, 2]},
                       "timings": {"total_s": 3.0}, "history": hist, "environment": {"torch": "2.13"}})
    assert "| asr | 0.2500 |" in md and "targeted_predictions" not in md and "carlini-backdoor" in md
    assert len(md.splitlines()) < 60  # first and last epochs only


def test_epoch_line_without_a_terminal():
    class M:
        name, modality = "clip", "image-text"

    line = epoch_line(M(), {"epoch": 3, "loss": 1.23456, "epoch_seconds": 2.5, "samples_per_s": 1000.4,
                            "eval_asr": 0.5, "eval_seconds": 1.0}, 40, 0.002)
    assert line == "clip epoch 3/40: loss 1.2346, lr 0.002, 1000 pairs/s, 2.5 s, eval asr 0.5000"
    assert "\r" not in line
    assert not progress_bar_on(True) or sys.stderr.isatty()  # pytest captures stderr: not a terminal
    assert not progress_bar_on(False)


def test_a_log_x_curve_is_labelled_at_its_counts(tmp_path, monkeypatch):
    """curve_plot(logx=True) ticks the measured x values, written plainly (5, 10, 25, 50), with no minor labels —
    a log axis alone labels 6×10^0, 3×10^1, ... (the first bundled dose plot)."""
    pytest.importorskip("matplotlib")
    import clpoison.report.plots as plots

    seen = {}

    def keep(fig, path, dpi=110):
        ax = fig.axes[0]
        seen["major"] = [t.get_text() for t in ax.get_xticklabels()]
        seen["minor"] = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    plots.curve_plot(tmp_path / "c.png", {"mean": ([5, 10, 25, 50], [0.2, 0.3, 0.8, 1.0]),
                                          "clean": ([5, 10, 25, 50], [0.1] * 4)}, "count", "ASR", "t", logx=True)
    assert seen == {"major": ["5", "10", "25", "50"], "minor": []}
