"""Purification defenses: matrix completion (ME-Net USVT / Soft-Impute), JPEG and grayscale (ISS). Tiny tensors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clpoison.contexts import FilterContext
from clpoison.data.datasets import ImageDataset, stack_on_canvas
from clpoison.defenses import DEFENSES
from clpoison.defenses.purification.grayscale import Grayscale, GrayscaleParams, to_grayscale
from clpoison.defenses.purification.jpeg import Jpeg, JpegParams
from clpoison.defenses.purification.matrix_completion import (
    MatrixCompletion,
    MatrixCompletionParams,
    draw_masks,
    from_matrix,
    rank_for,
    soft_impute,
    to_matrix,
    usvt,
)
from clpoison.errors import ConfigError


def _dataset(n=6, h=16, w=16, seed=0, smooth=True):
    g = torch.Generator().manual_seed(seed)
    if smooth:  # natural-ish images: a smooth shared luminance, a mild per-image tint, a little noise
        base = torch.nn.functional.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(h, w), mode="bilinear",
                                               align_corners=True)
        tint = 0.8 + 0.4 * torch.rand(n, 3, 1, 1, generator=g)
        x = base * tint * 200 + 20 + torch.rand(n, 3, h, w, generator=g) * 6
        x = x.round().clamp(0, 255).to(torch.uint8)
    else:
        x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    return ImageDataset(x, torch.arange(n) % 2, ["a", "b"], "toy")


def _planted(batch=16, m=32, n=96, rank=2, keep=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, m, rank, generator=g, dtype=torch.float64) @ torch.randn(batch, rank, n, generator=g,
                                                                                   dtype=torch.float64)
    a = a / a.abs().amax(dim=(-2, -1), keepdim=True)
    mask = torch.rand(batch, m, n, generator=g, dtype=torch.float64) < keep
    return a, mask


def _rel_err(est, truth):
    return (est - truth).norm(dim=(-2, -1)) / truth.norm(dim=(-2, -1))


def _numpy_usvt(img, mask, k):
    """ME-Net ``train_pure.py::usvt`` on one h x 3w matrix, straight NumPy."""
    u, sigma, v = np.linalg.svd(img * mask)
    h = img.shape[0]
    s = np.zeros((h, h))
    for j in range(k):
        s[j, j] = sigma[j]
    s = np.concatenate((s, np.zeros((h, img.shape[1] - h))), axis=1)
    return u @ s @ v / mask.mean()


# --------------------------------------------------------------------------------------------------------------
# matrix estimation


def test_usvt_recovers_planted_low_rank_matrix():
    a, mask = _planted()
    est = usvt(a, mask, rank=2)
    err = _rel_err(est, a)
    zero_fill = _rel_err(a * mask, a)
    # USVT at the true rank: ~0.19 on average here; without the 1/p_obs rescaling it is ~0.25, zero fill ~0.45
    assert float(err.mean()) < 0.22, float(err.mean())
    assert bool((err < 0.6 * zero_fill).all())
    assert float(_rel_err(est * mask.double().mean(dim=(-2, -1))[:, None, None], a).mean()) > 0.23
    # fully observed, rank >= true rank: exact
    assert torch.allclose(usvt(a, torch.ones_like(mask), rank=5), a, atol=1e-10)


def test_usvt_matches_numpy_reference():
    a, mask = _planted(batch=3)
    k = rank_for(32, 32, 0.8)
    assert k == 25
    ref = np.stack([_numpy_usvt(a[i].numpy(), mask[i].numpy().astype(np.float64), k) for i in range(3)])
    got64 = usvt(a, mask, k).numpy()
    got32 = usvt(a.float(), mask, k).double().numpy()
    assert np.abs(got64 - ref).max() < 1e-10
    assert np.abs(got32 - ref).max() < 1e-5 * max(1.0, np.abs(ref).max())


def test_soft_impute_recovers_planted_matrix_and_keeps_observed_entries():
    a, mask = _planted(batch=4)
    est, iters = soft_impute(a, mask)
    assert float(_rel_err(est, a).max()) < 0.05
    assert torch.equal(est[mask], a[mask])
    assert bool((iters > 1).all()) and bool((iters <= 100).all())
    full, it0 = soft_impute(a, torch.ones_like(mask))
    assert torch.equal(full, a) and int(it0.sum()) == 0


def test_channel_layout_and_defense_match_menet_reference_at_p1():
    """p = 1: the mask keeps everything, so the whole pipeline is deterministic and must equal ME-Net's."""
    ds = _dataset(n=3, h=8, w=8, smooth=False)
    x = to_matrix(ds.images, torch.float64, torch.device("cpu"))
    assert torch.allclose(x[0, :, 8:16], ds.images[0, 1].double() * 2 / 255 - 1)  # G sits in the middle block
    assert torch.equal(from_matrix(x, 8), ds.images)
    params = MatrixCompletionParams(p_min=1.0, p_max=1.0, device="cpu", dtype="float64")
    out, info = MatrixCompletion(params).filter(ds, FilterContext(seed=3))
    for i in range(3):
        img = ds.images[i].permute(1, 2, 0).numpy().astype(np.float64) * 2 / 255 - 1
        mat = np.concatenate([img[:, :, 0], img[:, :, 1], img[:, :, 2]], axis=1)
        w = np.clip(_numpy_usvt(mat, np.ones_like(mat), 6), -1, 1)
        ref = np.rint((w + 1) * 255 / 2).astype(np.uint8)
        ref = np.stack([ref[:, c * 8 : (c + 1) * 8] for c in range(3)])
        assert np.array_equal(out.images[i].numpy(), ref)
    assert info["rank"] == {"8x8": 6} and info["mean_observed"] == 1.0


# --------------------------------------------------------------------------------------------------------------
# the defenses on datasets


def _check_common(ds, out, before):
    assert torch.equal(ds.images, before), "the input tensor was modified"
    assert out.images.dtype == torch.uint8 and out.images.shape == ds.images.shape
    assert torch.equal(out.labels, ds.labels) and out.class_names == ds.class_names
    assert out.images.data_ptr() != ds.images.data_ptr()


@pytest.mark.parametrize("method", ["usvt", "soft_impute"])
def test_matrix_completion_dataset(method):
    ds = _dataset()
    before = ds.images.clone()
    mc = MatrixCompletion(MatrixCompletionParams(method=method, device="cpu", batch_size=4))
    out, info = mc.filter(ds, FilterContext(seed=0))
    _check_common(ds, out, before)
    again, _ = mc.filter(ds, FilterContext(seed=0))
    other, _ = mc.filter(ds, FilterContext(seed=1))
    assert torch.equal(out.images, again.images)
    assert not torch.equal(out.images, other.images)
    assert 0 < info["mean_abs_change"] < 40 and 0.8 <= info["mean_observed"] <= 1.0
    assert info["images_out"] == len(ds) and info["seconds"] >= 0
    # the output does not depend on how the images are chunked
    one, _ = MatrixCompletion(MatrixCompletionParams(method=method, device="cpu", batch_size=1)).filter(ds, FilterContext(seed=0))
    assert (one.images.int() - out.images.int()).abs().max() <= 1


def test_matrix_completion_masks_are_seeded_locally():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    m1, p1 = draw_masks(torch.tensor([5, 6]), (4, 12), 0.8, 1.0)
    m2, _ = draw_masks(torch.tensor([5, 7]), (4, 12), 0.8, 1.0)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    assert torch.equal(m1[0], m2[0]) and not torch.equal(m1[1], m2[1])
    assert bool(((p1 >= 0.8) & (p1 <= 1.0)).all())
    # the mask is drawn over the whole h x 3w matrix: channels get different masks
    big, _ = draw_masks(torch.tensor([1]), (32, 96), 0.5, 0.5)
    assert not torch.equal(big[0, :, :32], big[0, :, 32:64])
    assert abs(float(big.float().mean()) - 0.5) < 0.05


def test_matrix_completion_ladder_copies():
    ds = _dataset(n=3, h=8, w=8)
    p = MatrixCompletionParams(copies=2, p_sampling="ladder", device="cpu")
    out, info = MatrixCompletion(p).filter(ds, FilterContext(seed=0))
    assert len(out) == 6 and torch.equal(out.labels, ds.labels.repeat(2))
    assert info["mean_keep_p"] == pytest.approx((0.9 + 1.0) / 2)


def test_padded_canvas_valid_area_only():
    g = torch.Generator().manual_seed(0)
    ims = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g),
           torch.randint(0, 256, (3, 8, 16), dtype=torch.uint8, generator=g)]
    canvas, sizes = stack_on_canvas(ims)
    ds = ImageDataset(canvas, torch.tensor([0, 1]), ["a", "b"], sizes=sizes)
    before = ds.images.clone()
    for d in (MatrixCompletion(MatrixCompletionParams(device="cpu")), Jpeg(JpegParams()), Grayscale(GrayscaleParams())):
        out, _ = d.filter(ds, FilterContext(seed=0))
        _check_common(ds, out, before)
        assert torch.equal(out.sizes, sizes)
        assert int(out.images[0, :, :, 8:].abs().sum()) == 0, f"{d.name} wrote into the padding"
    out, info = MatrixCompletion(MatrixCompletionParams(device="cpu")).filter(ds, FilterContext(seed=0))
    assert info["rank"] == {"8x16": 6, "8x8": 6}


def test_jpeg():
    ds = _dataset(n=4, h=32, w=32)
    before = ds.images.clone()
    hi, info_hi = Jpeg(JpegParams(quality=100)).filter(ds, FilterContext())
    lo, info_lo = Jpeg(JpegParams(quality=10)).filter(ds, FilterContext())
    _check_common(ds, hi, before)
    _check_common(ds, lo, before)
    assert info_hi["mean_abs_change"] < 2.0 < info_lo["mean_abs_change"]
    assert info_lo["mean_abs_change"] > 3 * info_hi["mean_abs_change"]
    again, _ = Jpeg(JpegParams(quality=10)).filter(ds, FilterContext())
    assert torch.equal(lo.images, again.images)
    # same as a direct Pillow round trip (what ISS does)
    buf = io.BytesIO()
    Image.fromarray(ds.images[0].permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=10)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert np.array_equal(lo.images[0].permute(1, 2, 0).numpy(), ref)
    assert JpegParams().quality == 10


def test_grayscale():
    ds = _dataset(n=4, smooth=False)
    before = ds.images.clone()
    out, info = Grayscale(GrayscaleParams()).filter(ds, FilterContext())
    _check_common(ds, out, before)
    assert torch.equal(out.images[:, 0], out.images[:, 1]) and torch.equal(out.images[:, 1], out.images[:, 2])
    luma = (ds.images.double() * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
    assert float((out.images[:, 0].double() - luma).abs().max()) <= 0.51
    pil = np.asarray(Image.fromarray(ds.images[0].permute(1, 2, 0).numpy()).convert("L"))
    assert np.array_equal(out.images[0, 0].numpy(), pil)
    grey = to_grayscale(out.images)  # idempotent
    assert torch.equal(grey, out.images)
    assert info["weights"] == [0.299, 0.587, 0.114]


# --------------------------------------------------------------------------------------------------------------
# params and registration


@pytest.mark.parametrize("params, key", [
    ({"p_min": 0.0}, "p_min"), ({"p_min": 1.2}, "p_min"), ({"p_max": -0.1}, "p_max"), ({"p_max": 1.01}, "p_max"),
    ({"p_min": 0.9, "p_max": 0.8}, "p_min"), ({"svd_prob": 0.0}, "svd_prob"), ({"svd_prob": 1.5}, "svd_prob"),
    ({"method": "nucnorm"}, "method"), ({"copies": 0}, "copies"), ({"batch_size": 0}, "batch_size"),
    ({"device": "tpu"}, "device"), ({"p_sampling": "random"}, "p_sampling"), ({"rank": 3}, "rank"),
])
def test_matrix_completion_bad_params(params, key):
    with pytest.raises(ConfigError, match=rf"defense\.params\.{key}"):
        MatrixCompletionParams.from_dict(params, "defense.params")


@pytest.mark.parametrize("cls, params, key", [
    (JpegParams, {"quality": 0}, "quality"), (JpegParams, {"quality": 101}, "quality"),
    (JpegParams, {"quality": 50.5}, "quality"), (JpegParams, {"qualty": 10}, "qualty"),
    (GrayscaleParams, {"weights": [1, 0, 0]}, "weights"), (GrayscaleParams, {"batch_size": -1}, "batch_size"),
])
def test_jpeg_grayscale_bad_params(cls, params, key):
    with pytest.raises(ConfigError, match=rf"defense\.params\.{key}"):
        cls.from_dict(params, "defense.params")


def test_defaults_and_registration():
    p = MatrixCompletionParams()
    assert (p.p_min, p.p_max, p.svd_prob, p.method, p.copies) == (0.8, 1.0, 0.8, "usvt", 1)
    for name, cls in (("matrix-completion", MatrixCompletion), ("jpeg", Jpeg), ("grayscale", Grayscale)):
        assert DEFENSES.get(name) is cls
        d = DEFENSES.get(name)(cls.Params.from_dict({}, "defense.params"))
        assert isinstance(d, cls) and d.name == name


def test_refuses_non_resident_datasets():
    for d in (MatrixCompletion(MatrixCompletionParams(device="cpu")), Jpeg(JpegParams()), Grayscale(GrayscaleParams())):
        with pytest.raises(ConfigError, match="resident image split"):
            d.filter(object(), FilterContext(seed=0))
