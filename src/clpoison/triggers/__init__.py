"""Backdoor triggers, one module per kind: fixed patch patterns (:mod:`~clpoison.triggers.patch`), the CTRL
frequency-domain trigger (:mod:`~clpoison.triggers.frequency`) and a trigger's picture as PNG
(:mod:`~clpoison.triggers.png`). This module picks the kind from a config mapping's ``type`` (``patch``, the default,
or ``ctrl``) and rebuilds a recorded trigger — what attacks, the poisoned-dataset record and the audit use.

Example::

    >>> t = build_trigger({"type": "ctrl", "magnitude": 50})
    >>> type(t).__name__, type(build_trigger({"pattern": "solid", "size": 2})).__name__
    ('FrequencyTrigger', 'Trigger')
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigError
from .frequency import CTRLSpec, FrequencyTrigger
from .patch import LOCATIONS, NLB_PATTERN, PATTERNS, Trigger, TriggerSpec
from .png import png_bytes, read_png

TRIGGER_TYPES = ("patch", "ctrl")

__all__ = ["CTRLSpec", "FrequencyTrigger", "LOCATIONS", "NLB_PATTERN", "PATTERNS", "TRIGGER_TYPES", "Trigger",
           "TriggerSpec", "build_trigger", "png_bytes", "read_png", "trigger_from_dict", "trigger_spec"]


def trigger_spec(d: Any, defaults: Optional[dict] = None, where: str = "trigger") -> Any:
    """The validated spec of a config mapping: ``type: ctrl`` → :class:`~clpoison.triggers.frequency.CTRLSpec`, else a
    :class:`TriggerSpec`. ``defaults`` (an attack's default trigger) fill the keys the mapping leaves out when both
    are of the same type; a mapping of another type replaces them whole."""
    if isinstance(d, (TriggerSpec, CTRLSpec)):
        return d
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of trigger keys, got {d!r}")
    d, defaults = dict(d or {}), dict(defaults or {})
    kind = d.get("type", defaults.get("type", "patch"))
    if kind not in TRIGGER_TYPES:
        raise ConfigError(f"{where}.type='{kind}' is unknown; choose one of: {', '.join(TRIGGER_TYPES)}")
    if defaults.get("type", "patch") == kind:
        d = {**defaults, **d}
    d.pop("type", None)
    return CTRLSpec.from_dict(d, where) if kind == "ctrl" else TriggerSpec.from_dict(d, where)


def build_trigger(spec: Any, defaults: Optional[dict] = None, where: str = "trigger") -> Any:
    """A trigger (:class:`Trigger` or :class:`~clpoison.triggers.frequency.FrequencyTrigger`) from a spec or a config
    mapping (e.g. ``attack.params.trigger``); both have ``apply(images, seed, sizes)``, ``to_dict``, ``sha256``,
    ``png`` and ``check_fits``."""
    s = trigger_spec(spec, defaults, where)
    return FrequencyTrigger(s) if isinstance(s, CTRLSpec) else Trigger(s)


def trigger_from_dict(d: dict) -> Any:
    """Rebuild the exact trigger recorded by ``to_dict`` (a manifest entry), verified against its sha256."""
    if (d.get("spec") or {}).get("type") == "ctrl":
        return FrequencyTrigger.from_dict(d)
    return Trigger.from_dict(d)
