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
import shutil

import numpy as np
import pytest
import torch

from clpoison.cli import main
from ddp_helpers import free_port

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
    # -- issue 29: the output guard (an output never is, contains or lies inside an input; '.', '/', links)
    ("poison-out-contains-its-data", ["poison", "ssl-backdoor", "--data", "{fx}/D/small.npz", "target=a",
                                      "--overwrite", "--out", "{fx}/D"], "contains the input"),
    ("poison-out-is-its-imagefolder", ["poison", "ssl-backdoor", "--data", "imagefolder", "--data-path", "{fx}/imgs",
                                       "target=a", "--format", "imagefolder", "--overwrite", "--out", "{fx}/imgs"],
     "is the input"),
    ("run-out-contains-its-data", [*RUN, "data.name=npz", "data.path={fx}/D/small.npz", "--overwrite",
                                   "--out", "{fx}/D"], "contains the input"),
    ("run-out-inside-its-export", [*RUN, "data.name=npz", "data.path={fx}/export/data.npz", "--out", "{fx}/export/r"],
     "lies inside the input"),
    ("report-out-is-its-run", ["report", "{fx}/run", "--overwrite", "--out", "{fx}/run"], "is the input"),
    ("evaluate-out-is-its-checkpoint", ["evaluate", "{fx}/run", "--out", "{fx}/run/checkpoint.pt"], "the input"),
    ("run-out-dot", [*RUN, "--overwrite", "--out", "."], "working folder"),
    ("run-out-root", [*RUN, "--overwrite", "--out", "/"], "working folder"),
    ("run-out-proc", [*RUN, "--out", "/proc/clpoison-fuzz/o"], "/proc"),
    ("run-out-symlink", [*RUN, "--out", "{fx}/link"], "symbolic link"),
    ("run-overwrite-not-a-run-folder", [*RUN, "--overwrite", "--out", "{fx}/notrun"], "not a run folder"),
    ("poison-overwrite-not-an-export", [*CE, "--overwrite", "--out", "{fx}/notrun"], "not a poisoned-dataset export"),
    # -- names are labels
    ("run-name-absolute", [*RUN, "name=/abs/x"], "name="),
    ("run-name-dotdot", [*RUN, "name=../../x"], "name="),
    ("grid-name-dotdot", ["grid", "{fx}/g-dotdot.yaml"], "name="),
    ("grid-integer-axis-key", ["grid", "{fx}/g-intkey.yaml"], "key 1"),
    # -- distributed start-up without peers: one line within the rendezvous timeout (1 s here)
    ("run-dist-rank0-without-peers", [*RUN, "--out", "o"], "waiting for 1 of 2 processes",
     {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}"}),
    ("run-dist-rank1-without-rank0", [*RUN, "--out", "o"], "waiting for rank 0",
     {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "{port}"}),
    ("run-dist-slurm-without-srun", [*RUN, "--out", "o"], "waiting for 1 of 2",
     {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_PORT": "{port}"}),
    ("run-dist-port-out-of-range", [*RUN, "--out", "o"], "MASTER_PORT=99999",
     {"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "99999"}),
    ("run-dist-addr-unresolvable", [*RUN, "--out", "o"], "MASTER_ADDR='no-such-host.invalid'",
     {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "no-such-host.invalid", "MASTER_PORT": "{port}"}),
    # -- hostile media
    ("datasets-imagefolder-decompression-bomb", ["datasets", "describe", "imagefolder", "--path", "{fx}/bombs"],
     "bomb.png"),
    ("run-imagefolder-decompression-bomb", [*RUN, "data.name=imagefolder", "data.path={fx}/bombs", "--out", "o"],
     "bomb.png"),
    ("poison-trigger-png-bomb", [*CE, "trigger.pattern=png", "trigger.path={fx}/bombs/a/bomb.png", "--out", "p"],
     "bomb.png"),
    ("datasets-truncated-tar-shard", ["datasets", "describe", "captions-tar", "--path", "{fx}/cut.tar"], "truncated"),
    ("datasets-extreme-aspect-canvas", ["datasets", "describe", "captions-csv", "--path", "{fx}/aspect/pairs.csv"],
     "canvas"),
    # -- manifests validated whole; every split of an export verified
    ("verify-manifest-bad-base64", ["verify", "{fx}/m-base64"], "trigger cannot be rebuilt"),
    ("verify-manifest-wrong-shape", ["verify", "{fx}/m-shape"], "trigger cannot be rebuilt"),
    ("verify-manifest-missing-key", ["verify", "{fx}/m-nosource"], "source is missing"),
    ("verify-manifest-trigger-not-object", ["verify", "{fx}/m-evil"], "trigger is not an object"),
    ("verify-manifest-infinity", ["verify", "{fx}/m-inf"], "Infinity"),
    ("verify-manifest-duplicate-index", ["verify", "{fx}/m-dup"], "duplicates"),
    ("verify-manifest-float-index", ["verify", "{fx}/m-float"], "poisoned_indices"),
    ("verify-manifest-duplicate-key", ["verify", "{fx}/m-dupkey"], "duplicate key"),
    ("verify-manifest-unknown-target", ["verify", "{fx}/m-target"], "targets.target"),
    ("verify-test-split-changed", ["verify", "{fx}/m-test"], "test split"),
    ("verify-triggered-test-changed", ["verify", "{fx}/m-trig"], "test_triggered.npz"),
    ("verify-copied-csv-export", ["verify", "{fx}/csv-copy"], "points outside the export"),
    ("run-manifest-float-index", [*RUN, "data.name=npz", "data.path={fx}/m-float/data.npz", "--out", "o"],
     "poisoned_indices"),
    ("evaluate-manifest-trigger-sha256-fails", ["evaluate", "{fx}/run", "--manifest", "{fx}/m-sha/manifest.json"],
     "sha256"),
    # -- every value checked before work, the right key blamed
    ("run-momentum-negative", [*RUN, "train.momentum=-1", "--out", "o"], "train.momentum"),
    ("run-max-resident-nan", [*RUN, "data.max_resident_gb=.nan", "--out", "o"], "data.max_resident_gb"),
    ("run-linear-l2-nan", [*RUN, "eval.linear_l2=.nan", "--out", "o"], "eval.linear_l2"),
    ("run-augment-mean-nan", [*RUN, "augment.mean=[.nan, 0.5, 0.5]", "--out", "o"], "augment.mean"),
    ("run-threads-huge", ["--threads", "100000", *RUN, "--out", "o"], "--threads"),
    ("run-npz-empty-test-split", [*RUN, "data.name=npz", "data.path={fx}/emptytest.npz", "--out", "o"], "x_test"),
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
    _issue29_fixtures(d)
    for name, spec in (("badenc", "{nope"), ("archenc", json.dumps({"format": "clpoison-encoder", "arch": "vit",
                                                                     "width": 4}))):
        (d / name).mkdir()
        (d / name / "encoder.safetensors").write_bytes((d / "run" / "encoder.safetensors").read_bytes())
        (d / name / "encoder.json").write_text(spec)
    return d


def _png(path, h, w, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h)).save(path)


def _issue29_fixtures(d):
    """Inputs an output must not replace, hostile media and hand-edited exports (issue 29)."""
    import io
    import tarfile

    from clpoison.poisoned.verify import write_sums

    r = np.random.default_rng(1)
    (d / "D").mkdir()
    np.savez(d / "D" / "small.npz", x_train=r.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(40) % 2, x_test=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(8) % 2, class_names=np.array(["a", "b"]))
    np.savez(d / "emptytest.npz", x_train=r.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), y_train=np.zeros(8, int),
             x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, int))
    for c in ("a", "b"):
        for i in range(3):
            _png(d / "imgs" / c / f"{i}.png", 8, 8)
    _png(d / "bombs" / "a" / "ok.png", 8, 8)
    _png(d / "bombs" / "a" / "bomb.png", 20000, 20000, "1")  # ~50 KB on disk, 400 Mpx decoded
    _png(d / "bombs" / "b" / "ok.png", 8, 8)
    (d / "link").symlink_to(d / "adir")
    (d / "notrun").mkdir()
    (d / "notrun" / "precious.txt").write_text("keep me\n")
    (d / "g-dotdot.yaml").write_text("name: ../escape\nbase: simclr-small\naxes: {seed: [0]}\n")
    (d / "g-intkey.yaml").write_text("base: simclr-small\naxes: {1: [0, 1]}\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(6):
            for ext, data in (("png", _png_bytes(8, 8)), ("txt", b"a photo")):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        cut = tf.getmembers()[6].offset  # the header of sample 3: a cut at a member boundary reads "cleanly"
    (d / "cut.tar").write_bytes(buf.getvalue()[:cut])
    rows = []
    for i in range(60):
        h, w = (1, 1500) if i == 0 else (1500, 1) if i == 1 else (32, 32)
        _png(d / "aspect" / f"{i}.png", h, w)
        rows.append(f"{d / 'aspect' / f'{i}.png'}\ta photo {i}")
    (d / "aspect" / "pairs.csv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    for i in range(40):
        _png(d / "cap" / f"{i}.png", 8, 8)
    (d / "cap" / "pairs.csv").write_text("filepath\ttitle\n" + "".join(f"{d / 'cap' / f'{i}.png'}\ta photo {i}\n"
                                                                           for i in range(40)))
    assert main(["poison", "carlini-backdoor", "--data", str(d / "cap" / "pairs.csv"), "--format", "csv",
                 "caption_source=templates", "trigger.size=4", "--no-progress", "--out", str(d / "csv-export")]) == 0
    shutil.copytree(d / "csv-export", d / "csv-copy")  # absolute paths: every row still points into csv-export
    assert main(["poison", "ssl-backdoor", "--data", str(d / "D" / "small.npz"), "target=a", "poison_count=4",
                 "trigger.size=4", "--no-progress", "--out", str(d / "export")]) == 0
    edits = {
        "m-base64": lambda m: m["trigger"].update(raw_base64="!!!notbase64"),
        "m-shape": lambda m: m["trigger"].update(shape=[3, 5, 5]),
        "m-nosource": lambda m: m.pop("source"),
        "m-evil": lambda m: m.update(trigger="evil"),
        "m-dup": lambda m: m.update(poisoned_indices=[m["poisoned_indices"][0]] * 2),
        "m-float": lambda m: m.update(poisoned_indices=[float(i) for i in m["poisoned_indices"]]),
        "m-target": lambda m: m["targets"].update(target="zebra"),
        "m-sha": lambda m: m["trigger"].update(raw_base64=_flip_base64(m["trigger"]["raw_base64"])),
    }
    for name, edit in [*edits.items(), ("m-inf", None), ("m-dupkey", None), ("m-test", None), ("m-trig", None)]:
        e = d / name
        shutil.copytree(d / "export", e)
        text = (e / "manifest.json").read_text()
        if edit is not None:
            m = json.loads(text)
            edit(m)
            text = json.dumps(m)
        elif name == "m-inf":
            text = text.replace('"poisoned_indices": [', '"poisoned_indices": [Infinity, ', 1)
        elif name == "m-dupkey":
            text = text.replace('"seed": 0', '"seed": 0, "seed": 1', 1)
        (e / "manifest.json").write_text(text)
        if name in ("m-test", "m-trig"):  # one pixel of a test split changed
            f = e / ("data.npz" if name == "m-test" else "test_triggered.npz")
            z = dict(np.load(f))
            z["x_test"][0, 0, 0, 0] ^= 1
            np.savez(f, **z)
        write_sums(e)  # SHA256SUMS rewritten: only the validation / fingerprints can catch it


def _png_bytes(h, w):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _flip_base64(b64):
    import base64

    raw = bytearray(base64.b64decode(b64))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode("ascii")


EPOCH_LINE = re.compile(r"^[\w-]+ epoch \d+/\d+: loss ")


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, needle, env", [(*c[1:3], c[3] if len(c) > 3 else {}) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_no_leftovers(fx, tmp_path, monkeypatch, capsys, argv, needle, env):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{fx}", str(fx)) for a in argv]
    port = str(free_port())
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():  # launcher variables of a distributed row; the rendezvous gives up after 1 s
        monkeypatch.setenv(k, v.replace("{port}", port))
    monkeypatch.setenv("CLPOISON_RENDEZVOUS_TIMEOUT_S", "1")
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
    assert len(CASES) == len({c[0] for c in CASES}) >= 147
