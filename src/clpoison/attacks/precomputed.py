"""Train on a poison made elsewhere (``attack.name: precomputed``): a ``clpoison poison`` export of image data.

The export's ``data.npz`` replaces the training split; the test split stays the run's clean one, and the
evaluation (kNN, linear probe, attack metrics) is fitted on the clean labelled train split, exactly as when the
attack runs in memory — so one crafted poison (e.g. Contrastive Poisoning, minutes to hours to craft) serves many
victim runs. With ``verify`` (default) the run's clean data must match the manifest's source fingerprint and the
file the manifest's output fingerprint: a poison made from other data, or modified after export, is refused. The
attack's own metrics come from the attack the manifest names, rebuilt from its recorded parameters.

Example (config)::

    attack: {name: precomputed, params: {path: runs/cp-sample-export}}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..contexts import EvalContext, PoisonContext
from ..data.datasets import ImageDataset, ImageSplits
from ..data.image_readers import load_npz
from ..errors import ConfigError
from .base import ATTACKS, Attack, AttackParams, PoisonResult
from ..poisoned.manifest import read_manifest, verify
from .ssl_backdoor_base import require_images


@dataclass
class PrecomputedParams(AttackParams):
    path: str = ""  # folder of a `clpoison poison` export of image data (data.npz + manifest.json)
    verify: bool = True  # refuse a poison made from other data or modified after export

    def __post_init__(self) -> None:
        p = Path(self.path).expanduser()
        if not self.path or not (p / "data.npz").is_file() or not (p / "manifest.json").is_file():
            raise ConfigError(f"attack.params.path='{self.path}' holds no data.npz + manifest.json; give the folder "
                              "`clpoison poison ... --out` wrote")


@ATTACKS.register("precomputed")
class Precomputed(Attack):
    """The training split of an exported poison; evaluation by the attack its manifest names."""

    name = "precomputed"
    modality = "image"
    Params = PrecomputedParams

    def __init__(self, params: PrecomputedParams) -> None:
        super().__init__(params)
        self.original: Optional[Attack] = None

    def poison(self, splits: Any, seed: int, context: Optional[PoisonContext] = None) -> PoisonResult:
        root = Path(self.params.path).expanduser()
        splits = require_images(splits, self.name)
        manifest = read_manifest(root / "manifest.json")
        train = load_npz(root / "data.npz", name="precomputed").train
        poisoned = ImageSplits(ImageDataset(train.images, train.labels, list(splits.train.class_names), train.name),
                               splits.test, dict(splits.source))
        if self.params.verify:
            verify(manifest, source=splits, output=poisoned)
        name = manifest["attack"]["name"]
        if name in ATTACKS and name != self.name:
            self.original = ATTACKS.build(name, manifest.get("params") or {})
            self.original.restore(manifest)
        return PoisonResult(poisoned, manifest)

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        return self.original.evaluate(context) if self.original is not None else {}
