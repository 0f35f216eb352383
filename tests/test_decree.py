"""DECREE trigger inversion (clpoison.audit.decree) and `clpoison inspect`: the loss and its gradient against a naive
reference, a planted backdoor found small and in the right place, a clean encoder not flagged, determinism, and the
one-line refusals."""

import json
import pickle

import numpy as np
import pytest
import torch

from clpoison.audit.decree import DecreeParams, decree_loss, invert_trigger, mask_pattern
from clpoison.audit.suspect import mask_overlap
from clpoison.cli import main
from clpoison.errors import ConfigError

H = 12
PATCH = (slice(2, 5), slice(7, 10))  # rows 2..4, columns 7..9: where the planted backdoor reads


class Planted(torch.nn.Module):
    """A linear encoder of centred pixels; with ``backdoor`` a 3×3 checkerboard at PATCH drives one direction."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.nn.Parameter(torch.randn(8, 3 * H * H, generator=g) / (3 * H * H) ** 0.5)
        v = torch.zeros(3, H, H)
        v[:, PATCH[0], PATCH[1]] = (torch.arange(3)[:, None] + torch.arange(3)[None, :]) % 2 * 2 - 1.0
        self.register_buffer("v", v.flatten())
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) - 0.5
        z = f @ self.A.t()
        if self.backdoor:
            z = z + 4 * (f @ self.v).unsqueeze(1) * torch.eye(8, dtype=z.dtype)[0]
        return z


def shadow(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, H, H), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


PARAMS = DecreeParams(batch_size=32, max_epochs=150, log_every=0)  # official cifar setting, smaller batches


def test_loss_and_gradient_match_a_naive_reference():
    torch.manual_seed(0)
    enc = Planted(True).double()
    x = shadow(5).double() / 255
    raw_m = torch.randn(H, H, dtype=torch.float64, requires_grad=True)
    raw_p = torch.randn(3, H, H, dtype=torch.float64, requires_grad=True)
    loss, cos, reg = decree_loss(enc, x, raw_m, raw_p, 0.01)
    gm, gp = torch.autograd.grad(loss, (raw_m, raw_p))

    m = torch.tanh(raw_m) / (2 - 1e-7) + 0.5  # the official form, one pair at a time
    p = torch.tanh(raw_p) / (2 - 1e-7) + 0.5
    z = enc((1 - m) * x + m * p)
    sims = [torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm()) for i in range(5) for j in range(5) if i != j]
    ref = -torch.stack(sims).mean() + 0.01 * m.unsqueeze(0).repeat(3, 1, 1).abs().sum()
    rm, rp = torch.autograd.grad(ref, (raw_m, raw_p))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert float(cos.detach()) == pytest.approx(float(torch.stack(sims).detach().mean()), rel=1e-5)
    assert torch.allclose(gm, rm, rtol=1e-4, atol=1e-8) and torch.allclose(gp, rp, rtol=1e-4, atol=1e-8)


def test_planted_backdoor_is_found_small_and_in_place_and_clean_encoder_is_not():
    bd = invert_trigger(Planted(True), shadow(), PARAMS)
    clean = invert_trigger(Planted(False), shadow(), PARAMS)
    for r in (bd, clean):
        assert r.mask.shape == (H, H) and r.pattern.shape == (3, H, H)
        assert float(r.mask.min()) >= 0 and float(r.mask.max()) <= 1
        assert float(r.pattern.min()) >= 0 and float(r.pattern.max()) <= 1
        assert r.trace and r.trace[-1]["epoch"] == r.epochs
    assert bd.found and bd.backdoored and bd.pl1_norm < 9 / H**2  # at most the 3×3 patch
    region = torch.zeros(H, H, dtype=torch.bool)
    region[PATCH] = True
    assert mask_overlap(bd.mask, region)["mass_in_trigger_region"] > 0.8
    assert not clean.backdoored and clean.pl1_norm > 0.3
    assert bd.pl1_norm == pytest.approx(float(bd.mask.sum()) / H**2, rel=1e-4)


def test_same_seed_same_trigger_other_seed_another():
    p = DecreeParams(batch_size=32, max_epochs=4, log_every=0, lr_milestones=[0, 100])
    a, b = (invert_trigger(Planted(True), shadow(), p) for _ in range(2))
    c = invert_trigger(Planted(True), shadow(), DecreeParams.from_dict({**p.to_dict(), "seed": 1}))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pattern, b.pattern) and a.trace == b.trace
    assert not torch.equal(a.mask, c.mask)


def test_encoder_is_left_as_it_was():
    enc = Planted(True).train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    invert_trigger(enc, shadow(), DecreeParams(batch_size=32, max_epochs=2, log_every=0))
    assert enc.training and all(q.requires_grad for q in enc.parameters())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_bad_params_and_shadow_are_one_line():
    with pytest.raises(ConfigError, match="decree.lr"):
        DecreeParams.from_dict({"lr": -1}, "decree")
    with pytest.raises(ConfigError, match="profile"):
        DecreeParams.for_profile("imagenet")
    assert DecreeParams.for_profile("clip").lr == 0.5
    with pytest.raises(Exception, match="at least 2"):
        invert_trigger(Planted(True), shadow(1), PARAMS)


def test_mask_pattern_stay_in_range_for_extreme_parameters():
    m, p = mask_pattern(torch.tensor([[-1e9, 1e9]]), torch.full((3, 1, 2), 1e9))
    assert m.tolist() == [[0.0, 1.0]] and float(p.max()) <= 1.0


# -- the command ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from clpoison.models import build_backbone
    from clpoison.models.encoder_file import save_encoder

    d = tmp_path_factory.mktemp("enc")
    torch.manual_seed(0)
    save_encoder(d, build_backbone("resnet10", 4, 2), {"arch": "resnet10", "width": 4, "stem_stride": 2},
                 {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3})
    return d


def test_inspect_writes_json_and_pictures(encoder_dir, tmp_path, capsys):
    out = tmp_path / "insp"
    rc = main(["inspect", str(encoder_dir), "--data", "cifar10-subset", "--shadow-size", "40", "--out", str(out),
               "max_epochs=2", "batch_size=20", "log_every=1"])
    assert rc == 0
    res = json.loads((out / "inspect.json").read_text())
    assert res["kind"] == "ssl" and res["data"]["shadow_images"] == 40 and len(res["trace"]) == 2
    assert 0 <= res["pl1_norm"] <= 1 and res["params"]["max_epochs"] == 2 and -1 <= res["clean_shadow_cosine"] <= 1
    for name in ("mask.png", "pattern.png", "trigger.png", "triggered.png", "preview.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "decree epoch 1" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*partial"))
    assert main(["inspect", str(encoder_dir), "--data", "cifar10-subset", "--out", str(out)]) == 2  # exists
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0  # report shows the inspection
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Backdoor inspection (DECREE)" in md and f"{res['pl1_norm']:.4f}" in md
    assert (tmp_path / "rep" / "plots" / "inspect_0_preview.png").read_bytes() == (out / "preview.png").read_bytes()
    assert "data:image/png;base64" in (tmp_path / "rep" / "report.html").read_text()


def _one_line_exit_2(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    return err


def test_wrong_size_shadow_and_unknown_format_are_one_line(encoder_dir, tmp_path, capsys):
    small = tmp_path / "small.npz"
    x = np.zeros((6, 16, 16, 3), np.uint8)
    np.savez(small, x_train=x, y_train=np.zeros(6, np.int64), x_test=x, y_test=np.zeros(6, np.int64),
             class_names=np.array(["a"]))
    err = _one_line_exit_2(["inspect", str(encoder_dir), "--data", str(small)], capsys)
    assert "16x16" in err and "--image-size 32" in err
    junk = tmp_path / "enc.pt"
    torch.save({"some.weight": torch.zeros(2)}, junk)
    assert "enc.pt" in _one_line_exit_2(["inspect", str(junk), "--data", "cifar10-subset"], capsys)
    assert "does not exist" in _one_line_exit_2(["inspect", str(tmp_path / "no"), "--data", "cifar10-subset"], capsys)
    _one_line_exit_2(["inspect", str(encoder_dir), "--data", "cifar10-subset", "--shadow-size", "1"], capsys)
    _one_line_exit_2(["inspect", str(encoder_dir), "--data", "cifar10-subset", "lr=oops"], capsys)


class _RunsCode:
    def __reduce__(self):
        return (print, ("PICKLE RAN CODE",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _RunsCode()}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert main(["inspect", str(evil), "--data", "cifar10-subset"]) == 2
    cap = capsys.readouterr()
    assert "PICKLE RAN CODE" not in cap.out + cap.err
    assert cap.err.startswith("error:") and "refused" in cap.err and len(cap.err.strip().splitlines()) == 1


def test_inspect_of_a_backdoored_clip_run_names_a_class_and_the_trigger_overlap(tmp_path, capsys):
    """A tiny Carlini-backdoored CLIP run: inspected through its clip.safetensors (image tower + projection), with
    zero-shot of triggered images and the manifest's trigger region."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: carlini-backdoor-small\n")
    run = tmp_path / "run"
    tiny = ["train.epochs=1", "train.batch_size=64", "train.warmup_epochs=0", "model.width=4", "data.train_subset=300",
            "method.params.text_width=16", "method.params.text_layers=1", "method.params.text_heads=2",
            "method.params.embed_dim=16", "method.params.vocab_size=300", "eval.knn_k=10",
            "eval.random_init_control=false", "eval.linear=false"]
    assert main(["run", str(cfg), *tiny, "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "insp"
    assert main(["inspect", str(run), "--data", "cifar10-subset", "--shadow-size", "32", "--manifest",
                 str(run / "manifest.json"), "--out", str(out), "max_epochs=1", "batch_size=16"]) == 0
    res = json.loads((out / "inspect.json").read_text())
    assert res["kind"] == "clip" and res["format"] == "clpoison-clip"
    zs = res["zeroshot"]
    assert zs["suspected_target"] in zs["triggered_shares"] and zs["images"] == 1017 - 32  # the test images not in the shadow set
    assert abs(sum(zs["triggered_shares"].values()) - 1) < 1e-3
    m = res["manifest"]
    assert m["target"] == "airplane" and m["trigger_location"] == "random" and m["region_share_of_image"] == 1.0
    assert m["mass_in_trigger_region"] == pytest.approx(1.0)
    assert m["suspected_target_is_target"] == (zs["suspected_target"] == "airplane")


def test_inspect_of_a_torchvision_state_dict(tmp_path, capsys):
    """Foreign weights without encoder.json: CIFAR normalisation at the shadow images' size."""
    from test_encoder_files import to_torchvision

    from clpoison.models import build_backbone

    pt = tmp_path / "tv.pt"
    torch.save(to_torchvision(build_backbone("resnet10", 4, 2).state_dict()), pt)
    assert main(["inspect", str(pt), "--data", "cifar10-subset", "--shadow-size", "16", "--out", str(tmp_path / "o"),
                 "max_epochs=1", "batch_size=8"]) == 0
    res = json.loads((tmp_path / "o" / "inspect.json").read_text())
    assert res["kind"] == "ssl" and res["format"] == "torchvision-resnet" and "zeroshot" not in res
    assert "CIFAR normalisation" in res["encoder_info"]["preprocessing"]["note"]
