"""Typed construction of dataclasses from plain mappings (YAML configs, ``key=value`` overrides, the ``params``
of methods, attacks and defenses): unknown keys and wrong types end in one :class:`ConfigError` line naming the key.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class P:
    ...     lr: float = 0.1
    ...     epochs: int = 1
    >>> from_dict(P, {"lr": "2e-3", "epochs": 3}, "train.")
    P(lr=0.002, epochs=3)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Optional, Union

from ..errors import ConfigError


_PLAIN = {bool: "true or false", str: "a string"}  # types checked as they are


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key} needs {len(args)} values, got {len(value)}")
            return tuple(_check_type(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return origin(_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of key: value")
        return dict(value)
    if tp in _PLAIN:
        if not isinstance(value, tp):
            raise ConfigError(f"{key}={value!r} must be {_PLAIN[tp]}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        return float(value)
    return value


def from_dict(cls: type, data: Optional[dict], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = prefix or "the config"
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{prefix}{u}' for u in unknown)} in {where.rstrip('.')}; "
            f"valid keys: {', '.join(names)}"
        )
    kwargs = {}
    for n in names:
        if n not in data:
            continue
        tp, key = hints[n], f"{prefix}{n}"
        if dataclasses.is_dataclass(tp):
            kwargs[n] = from_dict(tp, data[n], f"{key}.")
        else:
            kwargs[n] = _check_type(data[n], tp, key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def non_finite_key(values: Any, where: str = "") -> Optional[str]:
    """The dotted key of the first NaN or infinite float among nested ``values`` (a config as a dict), or None."""
    if isinstance(values, dict):
        items = [(f"{where}{k}", v) for k, v in values.items()]
    elif isinstance(values, (list, tuple)):
        items = [(f"{where.rstrip('.')}[{i}]", v) for i, v in enumerate(values)]
    else:
        return where.rstrip(".") if isinstance(values, float) and not math.isfinite(values) else None
    for key, v in items:
        found = non_finite_key(v, f"{key}.")
        if found:
            return found
    return None
