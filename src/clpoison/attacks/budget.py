"""The poison budget rule shared by the attacks: how many poisons a run crafts.

One of ``attack.params.poison_count`` (absolute) or ``attack.params.poison_rate`` (share of the clean training
split, falling back to the attack's default rate) gives the count; a positive rate always yields at least one. A
count larger than the clean training split is refused (one line), for every attack, rather than crafting an
arbitrarily large file.
"""

from __future__ import annotations

from typing import Optional

from ..errors import ConfigError


def resolve_budget(rate: Optional[float], count: Optional[int], n_train: int, default_rate: float) -> int:
    """Number of poisons from ``poison_count`` or ``poison_rate`` × clean training size (one of them)."""
    if rate is not None and count is not None:
        raise ConfigError("give only one of attack.params.poison_rate and attack.params.poison_count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"attack.params.poison_count={count!r} must be an integer >= 0")
        check_count(count, n_train)
        return count
    rate = default_rate if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"attack.params.poison_rate={rate!r} must lie in [0, 1]")
    k = int(round(float(rate) * n_train))
    return max(k, 1) if rate > 0 else 0


def check_count(count: int, n_train: int, where: str = "attack.params") -> None:
    """Refuse a poison budget larger than the clean training split (one :class:`ConfigError` line)."""
    if count > n_train:
        raise ConfigError(f"{where}.poison_count={count} is larger than the clean training split (only {n_train} "
                          f"samples); use at most {n_train} (or a poison_rate)")
