"""``clpoison poison``: an attack's parameters from a preset and ``key=value`` overrides, the clean data from a
source name or path, the attack run in memory, then the poisoned dataset written by
:func:`clpoison.attacks.export.export_poisoned` (nothing is written on error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..attacks import ATTACKS
from ..attacks.export import export_poisoned
from ..errors import ConfigError
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
                   overwrite: bool = False) -> tuple[Path, dict]:
    """Everything ``clpoison poison`` does: validate, load, poison in memory, then export (nothing written on error)."""
    cls = ATTACKS.get(attack)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory '{out}' already exists; pass --overwrite or choose another --out")
    params = cls.Params.from_dict(attack_params_from(preset, attack, overrides), "attack.params")
    atk = cls(params)
    splits = load_source(getattr(cls, "data_kind", "images"), data, data_path, image_size, seed, label_column, test_path)
    result = atk.poison(splits, seed)
    return export_poisoned(result.splits, result.manifest, out, overwrite), result.manifest or {}
