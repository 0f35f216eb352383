"""Where a feature-based attacker's features come from — step 2 of No-Label Backdoors (Wang, Ma, Jegelka, Wang,
arXiv 2404.06694; official ``main_poison.py``; ``algorithms.md`` §5.2, §5.4): L2-normalised **backbone** features
(the projection head dropped, as the official ``fc = Identity``) of the training images under the test-time
transform (resize to the encoder's input size, normalise; no augmentation), from one of

* ``features`` — a file of precomputed features, ``.npy`` (N, D) or ``.npz`` holding ``features`` (loaded without
  pickles); its row count must equal the training set's;
* ``encoder`` — a trained image-SSL encoder: a ``clpoison run`` folder or its ``checkpoint.pt`` (the method, model
  and input size come from the checkpoint's config);
* otherwise an encoder the attacker pretrains itself on the same *unlabelled* training images, through the one
  engine (:class:`~clpoison.engine.trainer.Trainer`) with the :class:`~clpoison.engine.surrogate.Surrogate`
  method, model, augmentation and optimiser; it checkpoints into the attack's work folder and resumes there.

Example::

    >>> import torch
    >>> from clpoison.engine.surrogate import Surrogate
    >>> s = Surrogate.from_dict({"model": {"arch": "convnet", "width": 8}, "augment": {"out_size": 16}}, "attacker")
    >>> x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    >>> f, info = attacker_features(x, surrogate=s, epochs=1, batch_size=32)
    >>> tuple(f.shape), round(float(f.norm(dim=1).mean()), 4), info["source"]
    ((64, 64), 1.0, 'pretrained by the attacker')
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ...data.augment import EvalTransform, TwoViewAugment
from ...data.loader import ResidentBatches, TwoViewBatches
from ...engine.checkpoint import read_checkpoint
from ...engine.trainer import Trainer, min_conv_channels
from ...errors import ConfigError, DataError
from ...eval.features import extract_features
from ...methods.build import method_from_checkpoint
from ...run_folder import checkpoint_file
from ...utils.io import sha256_tensor
from ...engine.surrogate import Surrogate, resumable_dir


def load_feature_file(path: str, n: int, where: str = "attack.params.features") -> torch.Tensor:
    """(N, D) float32 features from ``.npy`` or ``.npz`` (array ``features``); nothing is unpickled."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}='{path}' is not a file; give a .npy (N, D) or .npz with 'features'")
    try:
        z = np.load(p, allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                z = z["features"]
        arr = np.asarray(z)
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}='{path}' is not a .npy / .npz feature file ({type(e).__name__}); save the features "
                        "with numpy.save (no pickles)") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{where}='{path}' holds a {arr.dtype} array of shape {arr.shape}; expected numeric (N, D)")
    if len(arr) != n:
        raise DataError(f"{where}='{path}' has {len(arr)} rows but the training set has {n} images; compute the "
                        "features on the same training images, in the same order")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}='{path}' holds NaN or infinite values")
    return torch.from_numpy(arr.astype(np.float32))


def encoder_from_checkpoint(path: str, where: str = "attack.params.encoder") -> tuple[torch.nn.Module, EvalTransform, dict]:
    """The backbone, test-time transform and config of a ``clpoison run`` folder or checkpoint file."""
    ckpt = read_checkpoint(checkpoint_file(path, where, "give a `clpoison run` folder or its checkpoint"))
    method = method_from_checkpoint(ckpt, f"{where}='{path}'")
    if method.modality != "image":
        raise ConfigError(f"{where}='{path}' is a {method.name} ({method.modality}) model; give an image-SSL encoder")
    aug = (ckpt.get("config") or {}).get("augment") or {}
    tf = EvalTransform(int(aug.get("out_size", 32)), *(tuple(aug[k]) for k in ("mean", "std") if k in aug))
    return method.encoder, tf, dict(ckpt.get("config") or {})


def train_surrogate(surrogate: Surrogate, images: torch.Tensor, epochs: int, batch_size: int, device: torch.device,
                    seed: int, work_dir: Optional[Path] = None, progress: bool = False) -> tuple[torch.nn.Module, EvalTransform]:
    """Pretrain the attacker's encoder on the unlabelled ``images`` (resumable in ``work_dir``)."""
    if batch_size > len(images):
        raise ConfigError(f"attack.params.attacker_batch_size={batch_size} is larger than the {len(images)} training "
                          "images; lower it")
    method = surrogate.build_method()
    aug = surrogate.augment_config()
    cfg = surrogate.train_config(epochs, batch_size, progress=progress)
    snapshot = {"method": surrogate.method, "model": surrogate.model_config(), "augment": asdict(aug),
                "train": {"epochs": epochs, "batch_size": batch_size, **surrogate.train}, "seed": int(seed),
                "images_sha256": sha256_tensor(images)}
    if work_dir is not None:
        work_dir = resumable_dir(work_dir, snapshot, "attacker.json")
    batches = TwoViewBatches(ResidentBatches(_Images(images), batch_size, device, seed=seed), TwoViewAugment(aug),
                             channels_last=cfg.use_channels_last(device, min_conv_channels(method)))
    Trainer(method, batches, cfg, device, work_dir, snapshot, log_name="attacker.jsonl").fit(resume=True)
    return method.encoder, EvalTransform(aug.out_size, aug.mean, aug.std)


class _Images:
    """A bare image container for :class:`ResidentBatches` (the attacker never sees labels)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.sizes = images, None

    def __len__(self) -> int:
        return len(self.images)


def attacker_features(images: torch.Tensor, *, features: Optional[str] = None, encoder: Optional[str] = None,
                      surrogate: Optional[Surrogate] = None, epochs: int = 0, batch_size: int = 256,
                      device: Optional[torch.device] = None, seed: int = 0, work_dir: Optional[Path] = None,
                      progress: bool = False, echo: Callable[[str], None] = lambda s: None,
                      eval_batch_size: int = 512) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(features (N, D) L2-normalised on the CPU, info)`` of the training ``images`` from the first source given
    (``features`` file, ``encoder`` checkpoint, else the ``surrogate`` pretrained for ``epochs``)."""
    device = device or torch.device("cpu")
    t0 = time.perf_counter()
    if features:
        f = load_feature_file(features, len(images))
        info: dict[str, Any] = {"source": "feature file", "path": str(features)}
    else:
        if encoder:
            net, tf, cfg = encoder_from_checkpoint(encoder)
            info = {"source": "encoder checkpoint", "path": str(encoder), "method": cfg.get("method"),
                    "model": cfg.get("model")}
        else:
            if surrogate is None or epochs < 1:
                raise ConfigError("the attacker needs features: set attack.params.features, attack.params.encoder, "
                                  "or attack.params.attacker_epochs >= 1 to pretrain its own encoder")
            echo(f"attacker: pretraining its {surrogate.method['name']} encoder for {epochs} epochs")
            net, tf = train_surrogate(surrogate, images, epochs, batch_size, device, seed, work_dir, progress)
            info = {"source": "pretrained by the attacker", "method": surrogate.method,
                    "model": surrogate.model_config(), "epochs": epochs, "batch_size": batch_size}
        net = net.to(device)
        f = extract_features(net, images, transform=tf.to(device), batch_size=eval_batch_size, device=device)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["dim"] = int(f.shape[1])
    return F.normalize(f.float(), dim=1), info
