"""``clpoison poison``: an attack's parameters from a preset and ``key=value`` overrides, the clean data from a
source name or path, the attack run in memory, then the poisoned dataset written by
:func:`clpoison.attacks.export.export_poisoned` (nothing is written on error).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from ..attacks import ATTACKS
from ..attacks.export import export_poisoned
from ..errors import ConfigError
from ..utils.device import resolve_device
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
                   progress: bool = True) -> tuple[Path, dict]:
    """Everything ``clpoison poison`` does: validate, load, poison in memory, then export (nothing written on error)."""
    cls = ATTACKS.get(attack)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    params = cls.Params.from_dict(attack_params_from(preset, attack, overrides), "attack.params")
    atk = cls(params)
    splits = load_source(getattr(cls, "data_kind", "images"), data, data_path, image_size, seed, label_column, test_path)
    # a long crafting (Contrastive Poisoning) checkpoints next to OUT and resumes when the command is re-run
    craft = out.with_name(f".{out.name}.craft")
    result = atk.poison(splits, seed, {"device": resolve_device(device), "work_dir": craft, "echo": echo,
                                       "progress": progress})
    written = export_poisoned(result.splits, result.manifest, out, overwrite, result.artifacts)
    shutil.rmtree(craft, ignore_errors=True)
    return written, result.manifest or {}
