"""``clpoison poison``: an attack's parameters from a preset and ``key=value`` overrides, the clean data from a
source name or path, the attack run in memory, then the poisoned dataset written by
:func:`clpoison.poisoned.export.export_poisoned` (nothing is written on error).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Callable, Optional

from ..attacks import ATTACKS, Attack
from ..poisoned.export import check_format, export_poisoned
from ..poisoned.export_formats import untouched_files
from ..contexts import PoisonContext
from ..errors import ConfigError
from ..utils.device import resolve_device
from ..utils.io import check_output_path, dumps_json
from ..utils.lock import OutputLock
from .config import apply_overrides, read_yaml, resolve_presets
from .sources import load_source


def attack_params_from(preset: Optional[str], attack: str, overrides: list[str]) -> dict:
    """Attack parameters: a preset's / YAML file's ``attack.params`` (when it names the same attack), then
    ``key=value`` overrides (dotted keys go into nested mappings, e.g. ``trigger.size=8``)."""
    params: dict = {}
    if preset:
        src = read_yaml(preset) if Path(preset).suffix in (".yaml", ".yml") else {"preset": preset}
        a = resolve_presets(src).get("attack") or {}
        if a.get("name") not in (None, attack):
            raise ConfigError(f"preset '{preset}' configures attack '{a.get('name')}', not '{attack}'")
        params = dict(a.get("params") or {})
    return apply_overrides(params, list(overrides))


def poison_to_disk(attack: str, data: str, out: str | Path, overrides: list[str] = (), seed: int = 0,
                   preset: Optional[str] = None, data_path: Optional[str] = None, image_size: Optional[int] = None,
                   label_column: Optional[str] = None, test_path: Optional[str] = None,
                   overwrite: bool = False, device: str = "auto", echo: Callable[[str], None] = lambda s: None,
                   progress: bool = True, export: Optional[dict] = None,
                   caption_options: Optional[dict] = None) -> tuple[Path, dict]:
    """Everything ``clpoison poison`` does: validate, load, poison in memory, then export (nothing written on error)."""
    ATTACKS.get(attack)  # an unknown name fails first
    out = check_output_path(out, "dir", inputs=[data, data_path, test_path, list(overrides)])
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    atk = ATTACKS.build(attack, attack_params_from(preset, attack, overrides))
    return export_attack(atk, data, out, seed, data_path, image_size, label_column, test_path, overwrite, device,
                         echo, progress, export, caption_options)


def export_attack(atk: Attack, data: str, out: Path, seed: int = 0, data_path: Optional[str] = None,
                  image_size: Optional[int] = None, label_column: Optional[str] = None,
                  test_path: Optional[str] = None, overwrite: bool = False, device: str = "auto",
                  echo: Callable[[str], None] = lambda s: None, progress: bool = True,
                  export: Optional[dict] = None, caption_options: Optional[dict] = None) -> tuple[Path, dict]:
    """Load the clean data, run the (built) attack ``atk`` in memory, export the result to ``out``; ``export``
    holds :func:`~clpoison.poisoned.export.export_poisoned`'s format options (``fmt``, ``csv_separator``,
    ``csv_paths``) and ``caption_options`` the caption reader's (``data.captions.*``)."""
    out = check_output_path(out, "dir", inputs=[data, data_path, test_path, _params_of(atk)])
    with OutputLock(out):  # one writer per export folder, crafting included
        if out.exists() and not overwrite:
            raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
        check_format(atk.modality == "image-text", **(export or {}))  # before any loading or crafting
        splits = load_source(atk.modality, data, data_path, image_size, seed, label_column, test_path,
                             caption_options)
        # a long crafting (Contrastive Poisoning) checkpoints next to OUT and resumes when the command is re-run
        craft = craft_dir(out)
        result = atk.poison(splits, seed, PoisonContext(device=resolve_device(device), work_dir=craft, echo=echo,
                                                        progress=progress))
        copies = untouched_files(splits, result.splits, result.manifest)  # copied byte for byte
        written = export_poisoned(result.splits, result.manifest, out, overwrite, result.artifacts, lock=False,
                                  copies=copies, **(export or {}))
        shutil.rmtree(craft, ignore_errors=True)
    return written, result.manifest or {}


def craft_dir(out: Path) -> Path:
    """Where a long crafting for the export ``out`` checkpoints (and logs ``crafting.jsonl``) until it is written."""
    return out.with_name(f".{out.name}.craft")


def _params_of(atk: Attack) -> object:
    """The attack's parameters as plain values (paths among them are inputs the export must not replace)."""
    params = getattr(atk, "params", None)
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def poison_or_reuse(attack: str, params: dict, data: str, out: str | Path, seed: int = 0, device: str = "auto",
                    echo: Callable[[str], None] = lambda s: None, progress: bool = False,
                    reuse_only: bool = False) -> dict:
    """The manifest of ``attack`` with ``params`` and ``seed`` exported to ``out``: a finished export of exactly
    these (same canonical params and seed in its manifest) is reused, otherwise it is (re)made — an interrupted
    crafting resumes from its checkpoint beside ``out`` (benchmarks share crafted poisons this way).
    ``reuse_only``: never craft; one ConfigError line when there is no such export."""
    out = Path(out)
    man_path = out / "manifest.json"
    atk = ATTACKS.build(attack, params)
    want = json.loads(dumps_json(atk.params.to_dict()))
    if man_path.exists():
        man = json.loads(man_path.read_text())
        if man.get("attack", {}).get("name") == attack and man.get("params") == want and man.get("seed") == seed:
            return man
    if reuse_only:
        raise ConfigError(f"'{out}' holds no {attack} export of these params and seed (reuse only: nothing is "
                          "crafted); give the work folder and options of the run that made it")
    return export_attack(atk, data, out, seed, overwrite=True, device=device, echo=echo, progress=progress)[1]
