"""Fuzz table: every entry point × bad input ends in exactly one ``error:`` line naming the offending key or file,
exit status 2, and no leftovers (no ``OUT``, no ``OUT.partial``, no lock, fixtures unchanged).

Each row is ``(id, argv, needle)``; ``{fx}`` is the folder of small fixtures the test writes once (a tiny SimCLR
run, a code-running checkpoint, a checkpoint without ``model``, NPZ files with mismatched splits, a crafted CIFAR
folder, non-JSON / non-YAML files, a plain file where a folder is expected). A new command joins by adding rows.
The commands run in-process (``clpoison.cli.main``) in a fresh working folder, so a traceback fails the test.
"""

import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

from clpoison.cli import main

TINY = ["data.train_limit=64", "data.test_limit=32", "model.width=4", "train.epochs=1", "train.batch_size=32",
        "method.params.proj_dim=16", "eval.knn_k=5", "--no-progress"]
RUN = ["run", "{fx}/c.yaml", *TINY]
CE = ["poison", "corruptencoder", "--data", "cifar10-subset", "target=airplane"]

CASES = [
    # -- run: config file and keys
    ("run-config-is-dir", ["run", "{fx}/adir", "--out", "o"], "adir"),
    ("run-config-missing", ["run", "{fx}/nope.yaml", "--out", "o"], "nope.yaml"),
    ("run-config-bad-yaml", ["run", "{fx}/bad.yaml", "--out", "o"], "bad.yaml"),
    ("run-config-not-mapping", ["run", "{fx}/list.yaml", "--out", "o"], "list.yaml"),
    ("run-lr-inf", [*RUN, "train.lr=.inf", "--out", "o"], "train.lr"),
    ("run-lr-nan", [*RUN, "train.lr=.nan", "--out", "o"], "train.lr"),
    ("run-lr-negative", [*RUN, "train.lr=-1", "--out", "o"], "train.lr"),
    ("run-lr-huge-diverges", [*RUN, "train.lr=1e6", "--out", "o"], "train.lr"),
    ("run-warmup-nan", [*RUN, "train.warmup_epochs=.nan", "--out", "o"], "train.warmup_epochs"),
    ("run-momentum-inf", [*RUN, "train.momentum=.inf", "--out", "o"], "train.momentum"),
    ("run-seed-25-digits", [*RUN, "seed=1234567890123456789012345", "--out", "o"], "seed"),
    ("run-seed-negative", [*RUN, "seed=-1", "--out", "o"], "seed"),
    ("run-unknown-key", [*RUN, "train.bogus=3", "--out", "o"], "train.bogus"),
    ("run-epochs-zero", [*RUN, "train.epochs=0", "--out", "o"], "train.epochs"),
    ("run-epochs-string", [*RUN, "train.epochs=abc", "--out", "o"], "train.epochs"),
    ("run-batch-too-large", [*RUN, "train.batch_size=100000", "--out", "o"], "batch_size"),
    ("run-unknown-method", [*RUN, "method.name=simclrr", "--out", "o"], "simclrr"),
    ("run-unknown-attack", [*RUN, "attack.name=nosuch", "--out", "o"], "nosuch"),
    ("run-unknown-defense", [*RUN, "defense.name=nosuch", "--out", "o"], "nosuch"),
    ("run-knn-k-larger-than-data", [*RUN, "eval.knn_k=100000", "--out", "o"], "eval.knn_k"),
    ("run-train-limit-negative", [*RUN, "data.train_limit=-1", "--out", "o"], "data.train_limit"),
    ("run-override-without-equals", [*RUN, "--out", "o", "train.epochs"], "train.epochs"),
    ("run-npz-missing-file", [*RUN, "data.name=npz", "data.path={fx}/none.npz", "--out", "o"], "none.npz"),
    ("run-npz-not-npz", [*RUN, "data.name=npz", "data.path={fx}/notes.txt", "--out", "o"], "notes.txt"),
    ("run-npz-split-sizes-differ", [*RUN, "data.name=npz", "data.path={fx}/sizes.npz", "--out", "o"], "sizes.npz"),
    ("run-npz-lacks-arrays", [*RUN, "data.name=npz", "data.path={fx}/partial.npz", "--out", "o"], "partial.npz"),
    ("run-cifar-code-pickle", [*RUN, "data.name=cifar", "data.path={fx}/evil-cifar", "--out", "o"], "evil-cifar"),
    ("run-out-under-file", [*RUN, "--out", "{fx}/notes.txt/sub"], "notes.txt"),
    ("run-out-is-file-overwrite", [*RUN, "--out", "{fx}/notes.txt", "--overwrite"], "notes.txt"),
    ("run-out-exists", [*RUN, "--out", "{fx}/adir"], "--overwrite"),
    ("run-attack-budget-too-large", [*RUN, "attack.name=corruptencoder", "attack.params.target=airplane",
                                     "attack.params.poison_count=100000", "--out", "o"], "poison_count"),
    ("run-threads-negative", ["--threads", "-1", *RUN, "--out", "o"], "--threads"),
    ("run-threads-not-int", ["--threads", "abc", *RUN, "--out", "o"], "--threads"),
    # -- pretrain / demo
    ("pretrain-unknown-method", ["pretrain", "nosuch", "--out", "o"], "nosuch"),
    ("pretrain-clip-template-field", ["pretrain", "clip", "eval.zeroshot_templates=['a {x} {c}']", "--out", "o"],
     "eval.zeroshot_templates"),
    ("pretrain-clip-template-no-c", ["pretrain", "clip", "eval.zeroshot_templates=['a photo']", "--out", "o"],
     "eval.zeroshot_templates"),
    ("demo-out-exists", ["demo", *TINY, "--out", "{fx}/adir"], "--overwrite"),
    ("poison-no-data", ["poison", "corruptencoder", "target=airplane", "--out", "p"], "--data"),
    ("poison-unknown-data-key", [*CE, "data.bogus=1", "--out", "p"], "data.bogus"),
    ("poison-image-size-not-int", [*CE, "data.image_size=big", "--out", "p"], "data.image_size"),
    ("poison-format-does-not-fit", [*CE, "--format", "csv", "--out", "p"], "npz, imagefolder"),
    ("poison-bad-csv-separator", ["poison", "carlini-backdoor", "--data", "cifar10-subset", "--csv-separator", "ab",
                                  "--out", "p"], "separator"),
    ("demo-out-is-file", ["demo", *TINY, "--out", "{fx}/notes.txt"], "notes.txt"),
    ("demo-bad-key", ["demo", "train.nosuch=1", "--out", "o"], "train.nosuch"),
    # -- evaluate
    ("evaluate-code-checkpoint", ["evaluate", "{fx}/evil.pt"], "evil.pt"),
    ("evaluate-checkpoint-without-model", ["evaluate", "{fx}/nomodel.pt"], "nomodel.pt"),
    ("evaluate-checkpoint-is-list", ["evaluate", "{fx}/list.pt"], "list.pt"),
    ("evaluate-checkpoint-truncated", ["evaluate", "{fx}/truncated.pt"], "truncated.pt"),
    ("evaluate-checkpoint-is-text", ["evaluate", "{fx}/notes.txt"], "notes.txt"),
    ("evaluate-dir-without-checkpoint", ["evaluate", "{fx}/adir"], "checkpoint.pt"),
    ("evaluate-missing", ["evaluate", "{fx}/none"], "none"),
    ("evaluate-out-is-dir", ["evaluate", "{fx}/run", "--out", "{fx}/adir"], "--out"),
    ("evaluate-out-under-file", ["evaluate", "{fx}/run", "--out", "{fx}/notes.txt/m.json"], "notes.txt"),
    ("evaluate-knn-k-larger-than-data", ["evaluate", "{fx}/run", "eval.knn_k=100000", "data.train_limit=64"],
     "eval.knn_k"),
    ("evaluate-bad-key", ["evaluate", "{fx}/run", "eval.nosuch=1"], "eval.nosuch"),
    ("evaluate-safetensors-garbage", ["evaluate", "{fx}/garbage.safetensors"], "garbage.safetensors"),
    ("evaluate-state-dict-wrong-layout", ["evaluate", "{fx}/wrong.pth"], "not part of a torchvision ResNet"),
    ("evaluate-state-dict-code", ["evaluate", "{fx}/evil-sd.pth"], "evil-sd.pth"),
    ("evaluate-encoder-json-not-json", ["evaluate", "{fx}/badenc/encoder.safetensors"], "encoder.json"),
    ("evaluate-encoder-json-wrong-arch", ["evaluate", "{fx}/archenc/encoder.safetensors"], "encoder.json.arch"),
    # -- scan
    ("scan-simclr-run", ["scan", "{fx}/run", "--data", "cifar10-subset", "--out", "s.csv"], "CLIP"),
    ("scan-code-checkpoint", ["scan", "{fx}/evil.pt", "--data", "cifar10-subset", "--out", "s.csv"], "evil.pt"),
    ("scan-manifest-not-json", ["scan", "{fx}/run", "--data", "cifar10-subset", "--out", "s.csv",
                                "--manifest", "{fx}/bad.json"], "bad.json"),
    ("scan-manifest-missing", ["scan", "{fx}/run", "--data", "cifar10-subset", "--out", "s.csv",
                               "--manifest", "{fx}/none.json"], "none.json"),
    ("scan-out-is-dir", ["scan", "{fx}/run", "--data", "cifar10-subset", "--out", "{fx}/adir"], "--out"),
    ("scan-threshold-not-float", ["scan", "{fx}/run", "--data", "x", "--out", "s.csv", "--threshold", "abc"],
     "--threshold"),
    # -- poison (export)
    ("poison-unknown-attack", ["poison", "nosuch", "--data", "cifar10-subset", "--out", "p"], "nosuch"),
    ("poison-missing-data-flag", ["poison", "corruptencoder", "--out", "p"], "--data"),
    ("poison-corruptencoder-budget", [*CE, "poison_count=100000", "--out", "p"], "poison_count"),
    ("poison-poisonedencoder-budget", ["poison", "poisoned-encoder", "--data", "cifar10-subset", "target=airplane",
                                       "poison_count=100000", "--out", "p"], "poison_count"),
    ("poison-sslbackdoor-budget", ["poison", "ssl-backdoor", "--data", "cifar10-subset", "target=airplane",
                                   "poison_count=100000", "--out", "p"], "poison_count"),
    ("poison-rate-above-one", [*CE, "poison_rate=2", "--out", "p"], "poison_rate"),
    ("poison-trigger-opacity-string", [*CE, "trigger.opacity=abc", "--out", "p"], "trigger.opacity"),
    ("poison-trigger-unknown-key", [*CE, "trigger.bogus=1", "--out", "p"], "bogus"),
    ("poison-unknown-param", [*CE, "bogus=1", "--out", "p"], "bogus"),
    ("poison-out-exists", [*CE, "--out", "{fx}/adir"], "--overwrite"),
    ("poison-out-under-file", [*CE, "--out", "{fx}/notes.txt/p"], "notes.txt"),
    ("poison-out-is-file-overwrite", [*CE, "--out", "{fx}/notes.txt", "--overwrite"], "notes.txt"),
    ("poison-data-not-npz", ["poison", "corruptencoder", "--data", "{fx}/notes.npz", "target=airplane",
                             "--out", "p"], "notes.npz"),
    ("poison-cifar-code-pickle", ["poison", "corruptencoder", "--data", "cifar", "--data-path", "{fx}/evil-cifar",
                                  "target=airplane", "--out", "p"], "evil-cifar"),
    ("run-npz-object-array", [*RUN, "data.name=npz", "data.path={fx}/objects.npz", "--out", "o"], "objects.npz"),
    ("poison-npz-object-array", ["poison", "corruptencoder", "--data", "{fx}/objects.npz", "target=airplane",
                                "--out", "p"], "objects.npz"),
    ("poison-nlb-unknown-selection", ["poison", "nlb", "--data", "cifar10-subset", "selection=telepathy", "--out", "p"],
     "selection"),
    ("poison-nlb-target-without-class", ["poison", "nlb", "--data", "cifar10-subset", "selection=target", "--out", "p"],
     "attack.params.target"),
    ("poison-nlb-budget", ["poison", "nlb", "--data", "cifar10-subset", "selection=random", "poison_count=100000",
                           "--out", "p"], "budget"),
    ("poison-nlb-features-not-features", ["poison", "nlb", "--data", "cifar10-subset", "poison_count=10",
                                          "features={fx}/sizes.npz", "--out", "p"], "sizes.npz"),
    ("poison-nlb-code-encoder", ["poison", "nlb", "--data", "cifar10-subset", "poison_count=10", "encoder={fx}/evil.pt",
                                 "--out", "p"], "evil.pt"),
    ("poison-nlb-trigger-too-big", ["poison", "nlb", "--data", "cifar10-subset", "selection=random", "poison_count=10",
                                    "trigger.size=40", "--out", "p"], "trigger"),
    ("poison-ctrl-window", ["poison", "ctrl", "--data", "cifar10-subset", "target=airplane", "trigger.window=5",
                            "--out", "p"], "window"),
    ("poison-corruptencoder-ctrl-trigger", [*CE, "trigger.type=ctrl", "--out", "p"], "type"),
    # -- verify
    ("verify-not-a-folder", ["verify", "{fx}/notes.txt"], "notes.txt"),
    ("verify-missing", ["verify", "{fx}/none"], "none"),
    ("verify-no-manifest", ["verify", "{fx}/adir"], "manifest.json"),
    ("verify-run-folder", ["verify", "{fx}/run"], "manifest.json"),
    ("verify-no-argument", ["verify"], "dir"),
    # -- datasets / presets / top level
    ("datasets-cifar-code-pickle", ["datasets", "describe", "cifar", "--path", "{fx}/evil-cifar"], "evil-cifar"),
    ("datasets-npz-split-sizes-differ", ["datasets", "describe", "npz", "--path", "{fx}/sizes.npz"], "sizes.npz"),
    ("datasets-unknown", ["datasets", "describe", "nosuch"], "nosuch"),
    ("presets-unknown", ["presets", "nosuch"], "nosuch"),
    ("unknown-command", ["frobnicate"], "frobnicate"),
    ("no-command", [], "command"),
]


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The small fixture files every row refers to as ``{fx}/...``."""
    d = tmp_path_factory.mktemp("fuzz-fixtures")
    (d / "c.yaml").write_text("preset: simclr-small\n")
    (d / "bad.yaml").write_text("train: [1, 2\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "notes.txt").write_text("notes\n")
    (d / "notes.npz").write_text("not a zip\n")
    (d / "bad.json").write_text("{nope")
    (d / "adir").mkdir()
    torch.save({"method": "simclr", "model": _Evil(d / "PWNED"), "config": {}}, d / "evil.pt")
    torch.save({"method": "simclr", "config": {"method": {"name": "simclr"}}}, d / "nomodel.pt")
    torch.save([1, 2, 3], d / "list.pt")
    r = np.random.default_rng(0)
    np.savez(d / "sizes.npz", x_train=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_train=np.zeros(8, int),
             x_test=r.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), y_test=np.zeros(4, int))
    np.savez(d / "partial.npz", x_train=np.zeros((2, 8, 8, 3), np.uint8))
    evil = np.empty(1, dtype=object)
    evil[0] = _Evil(d / "PWNED")
    np.savez(d / "objects.npz", x_train=evil, y_train=np.zeros(1, int), x_test=evil, y_test=np.zeros(1, int))
    cifar = d / "evil-cifar"
    cifar.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        with open(cifar / name, "wb") as f:
            pickle.dump({"data": _Evil(d / "PWNED"), "labels": [0]}, f)
    assert main(["run", str(d / "c.yaml"), *TINY, "--out", str(d / "run")]) == 0
    full = (d / "run" / "checkpoint.pt").read_bytes()
    (d / "truncated.pt").write_bytes(full[: len(full) // 2])
    (d / "garbage.safetensors").write_bytes(b"not safetensors")
    torch.save({"foo.weight": torch.zeros(2)}, d / "wrong.pth")
    torch.save({"conv1.weight": _Evil(d / "PWNED")}, d / "evil-sd.pth")
    for name, spec in (("badenc", "{nope"), ("archenc", json.dumps({"format": "clpoison-encoder", "arch": "vit",
                                                                     "width": 4}))):
        (d / name).mkdir()
        (d / name / "encoder.safetensors").write_bytes((d / "run" / "encoder.safetensors").read_bytes())
        (d / name / "encoder.json").write_text(spec)
    return d


EPOCH_LINE = re.compile(r"^[\w-]+ epoch \d+/\d+: loss ")


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_no_leftovers(fx, tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{fx}", str(fx)) for a in argv]
    before = _tree(fx)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors exit through the parser
        rc = e.code
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    err = [ln for ln in lines if not EPOCH_LINE.match(ln)]  # training's per-epoch log lines are not errors
    assert rc == 2, lines
    assert len(err) == 1 and err[0].startswith("error:"), lines
    assert needle in err[0], err[0]
    assert list(tmp_path.iterdir()) == [], "something was written in the working folder"
    assert _tree(fx) == before, "a fixture changed or a leftover appeared beside it"
    assert not (fx / "PWNED").exists()


def test_case_count():
    """The docs (docs/reliability.md) quote this count."""
    assert len(CASES) == len({c[0] for c in CASES}) >= 90
