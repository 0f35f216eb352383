"""The one base of every component's hyper-parameters (methods, attacks, defenses).

A component's ``Params`` is a dataclass with the paper's defaults; :meth:`Params.from_dict` builds it from a plain
mapping (YAML, ``key=value`` overrides), so unknown keys and values of the wrong type end in one
:class:`~clpoison.errors.ConfigError` naming ``where.key``. Registries build a component from its config with
:meth:`clpoison.registry.Registry.build`.

Example::

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class P(Params):
    ...     lr: float = 0.1
    >>> P.from_dict({"lr": "2e-3"}, "defense.params")
    P(lr=0.002)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

from .errors import ConfigError
from .utils.schema import from_dict


@dataclass
class Params:
    """Base of per-component hyper-parameters; subclasses add fields with paper defaults."""

    section: ClassVar[str] = "params"  # the config section errors name by default (attack.params, ...)

    @classmethod
    def from_dict(cls, d: dict, where: Optional[str] = None) -> "Params":
        """Unknown keys and values of the wrong type end in one ConfigError naming ``where.key`` (default
        ``where``: the class's ``section``)."""
        return from_dict(cls, d, f"{where or cls.section}.")

    def to_dict(self) -> dict:
        """Every parameter, defaults included (what a manifest records)."""
        return asdict(self)


def check_positive(params: Params, *names: str, where: str = "method.params") -> None:
    """One ConfigError line ``where.NAME=V must be > 0`` for the first of ``names`` that is not positive."""
    for n in names:
        v = getattr(params, n)
        if not v > 0:
            raise ConfigError(f"{where}.{n}={v} must be > 0")
