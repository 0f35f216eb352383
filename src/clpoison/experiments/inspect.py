"""``clpoison inspect ENCODER --data SHADOW``: is this encoder backdoored? DECREE trigger inversion
(:mod:`clpoison.audit.decree`) on a shadow set of unlabelled images.

``ENCODER`` is anything ``clpoison evaluate`` reads: a clpoison run folder (a CLIP run is inspected through its
``clip.safetensors``: the image tower with its projection, and zero-shot through the text tower), a
``clip.safetensors``, an ``encoder.safetensors`` (or its folder), a torchvision-layout ResNet or open_clip state dict
(``.pt``/``.pth``, loaded ``weights_only``). The loaders are tried in the order of :data:`SUSPECT_LOADERS`; a loader
for another format appends a function ``(path, model options) -> Suspect | None`` there.

The shadow set is ``shadow_size`` images (seeded draw) of the ``split`` of ``--data``, at the encoder's input size.
For a CLIP, the inverted trigger is pasted on other labelled images of that split and zero-shot names the class it
drives (the suspected target); with ``--manifest`` (a backdoor's ``manifest.json``) the share of the inverted mask
inside the region where the real trigger is pasted is reported. ``OUT`` gets ``inspect.json`` and the pictures
(:func:`clpoison.audit.pictures.trigger_pngs`), written in ``.OUT.partial`` and renamed into place.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..poisoned.manifest import load_trigger, read_manifest
from ..audit.decree import DecreeParams, invert_trigger, mean_pairwise_cosine
from ..audit.pictures import trigger_pngs
from ..audit.suspect import Suspect, mask_overlap, suspected_target
from ..data.augment import CIFAR_MEAN, CIFAR_STD, EvalTransform
from ..errors import ConfigError, DataError
from ..models.encoder_file import load_encoder
from ..run_folder import CHECKPOINT, CLIP, CLIP_SPEC, ENCODER, holds
from ..utils.device import resolve_device
from ..utils.io import atomic_write_bytes, atomic_write_json, check_output_path
from ..utils.lock import OutputLock
from .sources import load_source

RESULT_NAME = "inspect.json"


def _frozen(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    return model


def clip_run_suspect(path: Path, model: dict) -> Optional[Suspect]:
    """A clpoison CLIP: a run folder holding ``clip.safetensors``, or that file (``None`` for anything else)."""
    from .scan import load_clip

    if holds(path, CLIP):
        path = path / CLIP
    elif path.name not in (CLIP, CLIP_SPEC):
        return None
    _, cfg, method, task = load_clip(path)
    net = _frozen(method.model, task.device)
    tf = task.transform()

    def embed(x: torch.Tensor) -> torch.Tensor:
        return net.encode_image(tf(x), normalize=False)

    def class_features(names: list[str]) -> torch.Tensor:
        return task.zeroshot(method, list(names)).text_features

    return Suspect(str(path), "clip", int(cfg.augment.out_size), embed, class_features, task.device,
                   {"format": "clpoison-clip", "preprocessing": {"size": cfg.augment.out_size,
                                                                 "mean": list(cfg.augment.mean), "std": list(cfg.augment.std)}})


def encoder_file_suspect(path: Path, model: dict) -> Optional[Suspect]:
    """An image encoder file: ``encoder.safetensors`` (+ ``encoder.json``), its folder (a run folder), a
    torchvision-layout ResNet or open_clip state dict (:func:`clpoison.models.encoder_file.load_encoder`)."""
    if path.name == CHECKPOINT and holds(path.parent, ENCODER):
        path = path.parent
    net, spec = load_encoder(path, model or None)
    device = resolve_device("auto")
    net = _frozen(net, device)
    pre = spec.get("preprocessing") or {}
    size = pre.get("size") or spec.get("image_size")
    mean, std = pre.get("mean", CIFAR_MEAN), pre.get("std", CIFAR_STD)
    tf = EvalTransform(int(size) if size else 0, mean, std).to(device)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return net(tf(x) if size else (x - tf.mean) / tf.std)

    kind = "clip" if spec.get("method") == "clip" else "ssl"
    return Suspect(str(path), kind, int(size) if size else None, embed, None, device,
                   {"format": spec.get("format"), "arch": spec.get("arch"), "preprocessing": pre or
                    {"mean": list(mean), "std": list(std), "note": "not recorded: CIFAR normalisation assumed"}})


SUSPECT_LOADERS: list[Callable[[Path, dict], Optional[Suspect]]] = [clip_run_suspect, encoder_file_suspect]


def load_suspect(path: str | Path, model: Optional[dict] = None) -> Suspect:
    """The encoder at ``path`` as a :class:`Suspect`, by the first loader of :data:`SUSPECT_LOADERS` that knows it;
    one :class:`DataError` line when none does."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"encoder '{path}' does not exist; pass a run folder, clip.safetensors, encoder.safetensors "
                        "or a .pt/.pth state dict")
    for loader in SUSPECT_LOADERS:
        s = loader(path, dict(model or {}))
        if s is not None:
            return s
    raise DataError(f"encoder '{path}' is in no format `clpoison inspect` reads")


def _shadow(ds: Any, suspect: Suspect, size: int, seed: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shadow indices, the other indices)`` of ``ds`` after checks: one image size, the encoder's."""
    n, _, h, w = ds.images.shape
    if getattr(ds, "sizes", None) is not None and bool((ds.sizes != torch.tensor([h, w])).any()):
        raise DataError(f"{what} mixes image sizes; the shadow set needs images of one size")
    if suspect.size and (h, w) != (suspect.size, suspect.size):
        raise DataError(f"{what} has {h}x{w} images but the encoder takes {suspect.size}x{suspect.size}; pass "
                        f"--image-size {suspect.size}")
    if n < 2 or size < 2:
        raise DataError(f"{what} gives {min(n, size)} shadow image(s); DECREE needs at least 2 (--shadow-size)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size], perm[size:]


def inspect_encoder(encoder: str | Path, data: str, out: Optional[str | Path] = None, *,
                    data_path: Optional[str] = None, image_size: Optional[int] = None, split: str = "test",
                    shadow_size: int = 1000, seed: int = 0, manifest: Optional[str | Path] = None,
                    profile: Optional[str] = None, params: Optional[dict] = None, model: Optional[dict] = None,
                    overwrite: bool = False, echo: Optional[Callable[[str], None]] = print) -> dict[str, Any]:
    """DECREE on ``encoder`` with shadow images from ``data``; returns the ``inspect.json`` dict and, with ``out``,
    writes it and the pictures there. ``profile`` (``cifar`` | ``clip``; default by input size: ``clip`` from
    224 px) picks the official setting, ``params`` overrides it (:class:`~clpoison.audit.decree.DecreeParams`)."""
    if out is not None:
        out = check_output_path(out, "dir")
        if out.exists() and not overwrite:
            raise ConfigError(f"output '{out}' already exists; pass overwrite=True or choose another output",
                              cli=f"--out '{out}' already exists; pass --overwrite or choose another --out")
    if split not in ("train", "test"):
        raise ConfigError(f"split '{split}' must be train or test")
    if manifest is not None:
        man = read_manifest(Path(manifest))
        trigger = load_trigger(man)
        if trigger is None:
            raise ConfigError(f"manifest '{manifest}' records no trigger; pass a backdoor attack's manifest.json")
    params = {"seed": seed, **(params or {})}  # --seed draws the shadow set and DECREE's initial trigger
    decree_params = None if profile is None else DecreeParams.for_profile(profile, params)  # bad params: fail early
    suspect = load_suspect(encoder, model)
    ds = getattr(load_source("image", data, data_path, image_size, seed), split)
    shadow_idx, rest = _shadow(ds, suspect, shadow_size, seed, f"--data '{data}' ({split} split)")
    h = int(ds.images.shape[-1])
    if decree_params is None:
        profile = "clip" if h >= 224 else "cifar"
        decree_params = DecreeParams.for_profile(profile, params)
    if echo:
        echo(f"inspect {suspect.kind} encoder '{encoder}': DECREE ({profile} profile) on {len(shadow_idx)} shadow "
             f"images of {data} ({split}), {h}x{h}, on {suspect.device}")
    shadow = ds.images[shadow_idx]
    clean_cos = _clean_cosine(suspect, shadow, decree_params.batch_size)
    res = invert_trigger(suspect.embed, shadow, decree_params, suspect.device, echo)
    summary: dict[str, Any] = {
        "encoder": str(encoder), "kind": suspect.kind, "format": suspect.info.get("format"),
        "data": {"source": data, "split": split, "shadow_images": len(shadow_idx), "image_size": h, "seed": seed},
        "profile": profile, "params": decree_params.to_dict(), "clean_shadow_cosine": clean_cos, **res.summary(),
        "encoder_info": suspect.info}
    if suspect.class_features is not None:
        labelled = rest[:1000] if len(rest) else shadow_idx
        summary["zeroshot"] = suspected_target(suspect, ds.images[labelled], ds.class_names, res.mask, res.pattern)
    if manifest is not None:
        target = (man.get("targets") or {}).get("target")
        spec = trigger.to_dict().get("spec", {})
        summary["manifest"] = {"path": str(manifest), "target": target, "trigger_location": spec.get("location")}
        if hasattr(trigger, "positions"):  # a patch trigger (the CTRL trigger covers the whole image)
            summary["manifest"].update(mask_overlap(res.mask, _trigger_region(trigger, h)))
        if "zeroshot" in summary:
            summary["manifest"]["suspected_target_is_target"] = summary["zeroshot"]["suspected_target"] == target
    if echo:
        zs = (summary.get("zeroshot") or {}).get("suspected_target")
        echo(f"PL1-norm {res.pl1_norm:.4f} ({'below' if res.backdoored else 'not below'} threshold "
             f"{res.threshold}): {'BACKDOORED' if res.backdoored else 'no backdoor found'}"
             + (f"; suspected target '{zs}'" if zs else ""))
    if out is not None:
        _write(Path(out), summary, trigger_pngs(res.mask, res.pattern, shadow[:6]))
    return summary


@torch.no_grad()
def _clean_cosine(suspect: Suspect, shadow: torch.Tensor, batch_size: int) -> float:
    """Mean pairwise cosine of the shadow embeddings *without* a trigger, per batch as DECREE sees them (how close
    to collapse the encoder already is: DECREE's success threshold is 0.99)."""
    vals = [float(mean_pairwise_cosine(suspect.embed(shadow[s:s + batch_size].to(suspect.device).float() / 255)))
            for s in range(0, len(shadow) - 1, batch_size) if len(shadow[s:s + batch_size]) > 1]
    return round(sum(vals) / len(vals), 6)


def _trigger_region(trigger: Any, size: int, draws: int = 8192) -> torch.Tensor:
    """Bool (size, size): every pixel some placement of ``trigger`` covers (its placements drawn ``draws`` times, so
    a random location covers the whole image)."""
    pos = trigger.positions(draws, size, size, torch.Generator().manual_seed(0)).reshape(-1, 2).unique(dim=0)
    s = trigger.spec.size
    region = torch.zeros(size, size, dtype=torch.bool)
    for y, x in pos.tolist():
        region[y:y + s, x:x + s] = True
    return region


def _write(out: Path, summary: dict[str, Any], pngs: dict[str, bytes]) -> None:
    """``out/inspect.json`` + PNGs, built in ``.OUT.partial`` and renamed into place under the output's lock."""
    with OutputLock(out):
        tmp = out.with_name(f".{out.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, data in pngs.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_json(tmp / RESULT_NAME, {**summary, "pictures": sorted(pngs)})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
