"""CorruptEncoder's poisoned-image layout: canvas size and the object's and trigger's top-left corners (Zhang, Liu,
Jia, Gong, "Data Poisoning based Backdoor Attacks to Contrastive Learning", CVPR 2024, arXiv 2211.08229; dossier
``algorithms.md`` §2.5, guard §2.9). Pure geometry: the attack draws the uniforms and composites the pixels.

Layout (§2.5, :func:`corrupt_layout`): ``p_h, p_w = o_h, 2·o_w`` (left-right; ``top-bottom`` is the transposed
variant the paper also describes; ``layout=both`` picks one per image). The object sits at the left or right edge
with ``object_marginal`` (0.05 of ``p_w``) jitter; the trigger's top-left corner is uniform in
``[o_x+o_w+dx·p_w, p_w−dx·p_w−t]`` (object left) or ``[dx·p_w, o_x−dx·p_w−t]`` (object right) with
``dx = trigger_marginal/2`` (0.125), and ``[dy·p_h, p_h−dy·p_h−t]`` vertically with ``dy = trigger_marginal``
(0.25). **Guard** (§2.9): where an interval inverts (small objects), its margin shrinks until the trigger is
centred in the free span, so the trigger always stays inside the other half; objects too small to leave room for
the trigger at all are upscaled first (to ``(t+1)/(1−2·object_marginal)`` on the split axis and ``t`` across).
"""

from __future__ import annotations

import math
from typing import Sequence

from ...errors import ConfigError, DataError


def min_object_size(trigger: int, object_marginal: float = 0.05) -> tuple[int, int]:
    """Smallest object (along the split axis, across it) that leaves room for the trigger in the other half."""
    return math.ceil((trigger + 1) / (1 - 2 * object_marginal)), trigger


def _pick(lo: float, hi: float, u: float, a: int, b: int) -> int:
    """An integer in [a, b] drawn as round(U(lo, hi)) (lo <= hi), clamped to [a, b]."""
    return int(min(max(round(lo + u * (hi - lo)), a), b))


def _trigger_span(a: int, b: int, t: int, margin: float, lo_rel_a: bool, hi_rel_b: bool) -> tuple[float, float]:
    """Top-left interval for a trigger of size t inside [a, b] with ``margin`` from both ends, shrunk (the guard)
    until non-empty: the margin becomes (b − a − t)/2, i.e. the trigger is centred in the span."""
    m = margin
    if (b - m - t) < (a + m):
        m = max(0.0, (b - a - t) / 2)
    return a + m, b - m - t


def corrupt_layout(o_h: int, o_w: int, t: int, side: str, u: Sequence[float], object_marginal: float = 0.05,
                   trigger_marginal: float = 0.25) -> dict:
    """Geometry of one poisoned image (§2.5): canvas size, object and trigger top-left corners (ints).

    ``side`` is where the object sits: ``left``/``right`` (canvas o_h × 2·o_w) or ``top``/``bottom``
    (2·o_h × o_w). ``u`` = three uniforms in [0, 1) (object jitter, trigger along, trigger across).
    The trigger lies fully inside the half not taken by the object (guarded, see module docstring).
    """
    if side not in ("left", "right", "top", "bottom"):
        raise ConfigError(f"layout side '{side}' must be left, right, top or bottom")
    horizontal = side in ("left", "right")
    L, C = (o_w, o_h) if horizontal else (o_h, o_w)  # object length along the split axis, across it
    need_l, need_c = min_object_size(t, object_marginal)
    if L < need_l or C < need_c:
        raise DataError(f"object {o_h}x{o_w} too small for a {t}px trigger in the {side} layout; it needs "
                        f"{need_l} px along and {need_c} px across (objects are upscaled by the attack)")
    P = 2 * L  # canvas length along the split axis
    jit = object_marginal * P
    first = side in ("left", "top")
    if first:
        o = _pick(0.0, jit, u[0], 0, P - L)
        a, b = o + L, P  # free span for the trigger
        dx = trigger_marginal / 2 * P
        lo, hi = o + L + dx, P - dx - t
    else:
        o = _pick(P - L - jit, P - L, u[0], 0, P - L)
        a, b = 0, o
        dx = trigger_marginal / 2 * P
        lo, hi = dx, o - dx - t
    if hi < lo:  # the guard: the official interval inverts for small objects
        lo, hi = _trigger_span(a, b, t, dx, True, True)
    t_along = _pick(lo, hi, u[1], a, b - t)
    dy = trigger_marginal * C
    clo, chi = dy, C - dy - t
    if chi < clo:
        clo, chi = _trigger_span(0, C, t, dy, True, True)
    t_across = _pick(clo, chi, u[2], 0, C - t)
    if horizontal:
        return {"p_h": C, "p_w": P, "o_x": o, "o_y": 0, "t_x": t_along, "t_y": t_across, "side": side}
    return {"p_h": P, "p_w": C, "o_x": 0, "o_y": o, "t_x": t_across, "t_y": t_along, "side": side}
