"""Screened exact patching: ``ap`` with ``screen="atp"`` (or ``"atpstar"``, ``"ig"``).

Exact patching of every unit costs one patched pass per unit: 36,864 neurons on a GPT-2-small
shape. The AtP* recipe (Kramár et al. 2024, §3.4) is to rank every unit with a cheap method,
verify exactly where the ranking says it matters, and bound what the ranking missed:

1. **Screen**: the screen method scores every unit of each kind (same runner, same direction);
   units are ranked by |mean screen score| over samples.
2. **Verify**: ``ap`` patches exactly the ``screen_top_k`` best-ranked units of each kind (all
   layers together) plus an **audit**: ``screen_audit`` units drawn uniformly at random, without
   replacement, from the rest (``screen_seed``).
3. **Bound**: let tau be the ``screen_top_k``-th largest |mean exact score| among the verified
   units (the top-K that the result reports). A unit that was not verified is a *false negative*
   when its |mean exact score| exceeds tau: it would have entered the exact top-K. The audit is
   a uniform sample of the ``m`` units outside the screened top-K; ``x`` of its ``a`` units
   exceed tau, so the number ``D`` of such units in the whole rest has a hypergeometric
   likelihood, and ``F = D - x`` (the ones still unverified) is estimated by ``x (m - a) / a``
   with an exact (Clopper-Pearson-style) hypergeometric interval at level 0.95.

Every site screens (``resid_pre``, ``attn_out``, ``q`` ... as well as heads and neurons). With a
``positions`` setting other than ``"all"`` (``"each"`` or names) the units above are (unit,
position) cells: the screen (``atp`` or ``ig``, at the same positions; ``atpstar`` scores no
positions) ranks every cell, and exactly the top-K cells and the audit cells are patched, each
a suffix from its layer and position (:func:`exact_cells`); labels read ``L.U@P``.

The result's scores are exact where a unit was verified and NaN elsewhere: never a screen
estimate in the exact column. ``extras["screen.<kind>"]`` keeps the screen's scores,
``extras["exact.<kind>"]`` ``[n_layers, n_units(, n_pos)]`` is 1 where a unit was patched
exactly (2 for audit units), and ``meta["screening"]`` records the units, tau, the audit
counts and the false-negative estimate per kind. Signs are those of ``ap`` (denoising: + restores the clean
behaviour; noising: - means the unit is needed).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Float

from ..components import ComponentKind
from ..engine import progress_bar
from ..registry import get_method
from ..sites import Positions, ap_layer, ap_passes, resolve_positions

SCREENS = ("atp", "atpstar", "ig")
LEVEL = 0.95  # confidence level of the false-negative interval
SCREEN_DEFAULTS = {"screen": None, "screen_top_k": 100, "screen_audit": 100, "screen_seed": 0}
SCREEN_HELP = {
    "screen": f"screened exact patching: rank every unit with this cheap method ({', '.join(SCREENS)}), "
              "patch exactly the top units of each kind plus a random audit of the rest; "
              "unverified units are NaN (default: none, every unit exact)",
    "screen_top_k": "with --screen: units of each kind patched exactly from the top of the screen",
    "screen_audit": "with --screen: units of each kind drawn at random from the rest and patched "
                    "exactly, to estimate how many top units the screen missed",
    "screen_seed": "with --screen: seed of the audit sample",
}


class _Prefixed:
    """A checkpoint whose chunk names start with ``prefix``: the screen's chunks (``ig`` keeps
    ``heads.layer0`` ...) never collide with the exact pass's."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix = inner, prefix

    def chunk(self, name, compute, on_reuse=None):
        return self.inner.chunk(self.prefix + name, compute, on_reuse)


def check_screen_settings(settings: dict) -> None:
    """Refuse bad screening settings before any run, naming the setting."""
    screen = settings.get("screen")
    if screen is None:
        return
    if screen not in SCREENS:
        raise ValueError(f"screen={screen!r}: choose one of {', '.join(SCREENS)} (or none).")
    for key in ("screen_top_k", "screen_audit", "screen_seed"):
        value = settings.get(key, SCREEN_DEFAULTS[key])
        low = 1 if key == "screen_top_k" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key}={value!r}: give a whole number >= {low}.")
    if settings.get("units") is not None:
        raise ValueError("screen and units cannot be combined: the screen chooses the units.")
    if screen == "atpstar" and settings.get("positions", "all") not in ("all", None):
        raise ValueError(f"screen=atpstar cannot rank positions (positions="
                         f"{settings['positions']!r}): its QK fix scores heads over all "
                         "positions; screen with atp or ig.")


def screened_patching(runner, kinds: list[ComponentKind], settings: dict, show_progress: bool,
                      exact: Callable) -> tuple[dict, dict]:
    """Screen, verify the chosen units with ``exact`` (``ap``'s function, called with a per-layer
    ``units`` setting) and bound the misses; see the module docstring. With a ``positions``
    setting other than ``"all"`` the screen ranks (unit, position) cells and exactly the chosen
    cells are patched (:func:`exact_cells`)."""
    check_screen_settings(settings)
    screen = get_method(settings["screen"])
    positions = resolve_positions(runner.task, settings.get("positions", "all"))
    outer = runner.checkpoint
    runner.checkpoint = _Prefixed(outer, "screen.")
    try:
        # the screen's own defaults, with ap's resolved memory settings and positions
        shared = {k: settings[k] for k in ("max_memory", "max_batch_rows", "positions")
                  if k in screen.defaults and k in settings}
        screened, _ = screen.fn(runner, kinds, {**screen.defaults, **shared}, show_progress)
    finally:
        runner.checkpoint = outer
    chosen, summary, marks = {}, {}, {}
    for i, kind in enumerate(kinds):
        ranking = screened[kind.name].float().nanmean(0).abs().nan_to_num(0.0).flatten()
        top, audit = choose_units(ranking, settings["screen_top_k"], settings["screen_audit"],
                                  settings["screen_seed"] + i)
        cells = screened[kind.name].shape[1:]  # [layers, units(, positions)]
        chosen[kind.name] = by_layer(torch.cat([top, audit]), cells[1])
        mark = torch.zeros(ranking.numel(), dtype=torch.uint8)
        mark[top], mark[audit] = 1, 2
        marks[kind.name] = mark.view(cells)
    if positions is None:
        exact_settings = {**settings, "screen": None, "units": chosen}
        values, extras = exact(runner, kinds, exact_settings, show_progress)
    else:
        values, extras = exact_cells(runner, kinds, marks, positions, settings, show_progress), {}
    for kind in kinds:
        mark = marks[kind.name].flatten()
        exact_mean = values[kind.name].float().nanmean(0).flatten()
        summary[kind.name] = audit_summary(exact_mean, mark, settings["screen_top_k"], kind,
                                           values[kind.name].shape[2],
                                           cell_labels(kind, marks[kind.name].shape, positions))
        extras[f"screen.{kind.name}"] = screened[kind.name].float()
        extras[f"exact.{kind.name}"] = marks[kind.name]
    extras["meta"] = {"screening": {
        "screen": settings["screen"], "top_k": settings["screen_top_k"],
        "audit": settings["screen_audit"], "seed": settings["screen_seed"], "level": LEVEL,
        "cells": "units" if positions is None else "(unit, position) cells",
        "unverified": "NaN in the scores; the screen's scores are extras['screen.<kind>']",
        "kinds": summary}}
    return values, extras


def exact_cells(runner, kinds: list[ComponentKind], marks: dict[str, torch.Tensor],
                positions: Positions, settings: dict, show_progress: bool
                ) -> dict[str, torch.Tensor]:
    """``{kind: [n, layers, units, n_pos]}``: exact ``ap`` of exactly the cells where
    ``marks[kind]`` ``[layers, units, n_pos]`` is nonzero, NaN elsewhere. Each (layer,
    position) patches its chosen units together (:func:`attrscope.sites.ap_layer` on that one
    position); each (kind, layer) is one resumable chunk."""
    calls = [(kind, layer, j) for kind in kinds for layer in range(marks[kind.name].shape[0])
             for j in range(positions.n_pos) if marks[kind.name][layer, :, j].any()]
    total = sum(ap_passes(runner, int((marks[k.name][layer, :, j] > 0).sum()), one(positions, j))
                for k, layer, j in calls)
    values = {}
    with torch.no_grad(), progress_bar(total, f"ap {runner.direction} (screened cells)",
                                       show_progress) as bar:
        for kind in kinds:
            mark = marks[kind.name]

            def layer_cells(layer: int, kind=kind, mark=mark) -> dict[str, torch.Tensor]:
                out = torch.full((runner.n, mark.shape[1], positions.n_pos), float("nan"))
                for j in range(positions.n_pos):
                    units = torch.nonzero(mark[layer, :, j]).flatten()
                    if len(units):
                        device = runner.run_tokens.device
                        scored = ap_layer(runner, kind, layer, units.to(device), one(positions, j),
                                          settings, lambda: bar.update(1))
                        out[:, units, j] = scored[:, units, 0]
                return {"scores": out}

            values[kind.name] = torch.stack([runner.checkpoint.chunk(
                f"cells.{kind.name}.layer{layer}", lambda: layer_cells(layer))["scores"]
                for layer in range(mark.shape[0])], dim=1)
    return values


def one(positions: Positions, j: int) -> Positions:
    """Entry ``j`` of the position axis alone."""
    return Positions(positions.setting, [positions.labels[j]], positions.index[:, j:j + 1])


def cell_labels(kind: ComponentKind, shape: torch.Size, positions: Positions | None) -> list[str]:
    """``L.U`` (``L.U@P`` with positions) of every cell, in the flat order of ``shape``."""
    at = [None] if positions is None else positions.labels
    return [kind.unit_label(layer, unit, p) for layer in range(shape[0])
            for unit in range(shape[1]) for p in at]


def choose_units(ranking: Float[torch.Tensor, "units"], top_k: int, n_audit: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the ``top_k`` largest ``ranking`` entries (ties by position) and of a
    uniform sample of ``n_audit`` of the others (all of them when fewer remain)."""
    order = torch.argsort(ranking, descending=True, stable=True)
    top, rest = order[:top_k], order[top_k:]
    generator = torch.Generator().manual_seed(seed)
    audit = rest[torch.randperm(rest.numel(), generator=generator)[:n_audit]]
    return top, audit.sort().values


def by_layer(flat: torch.Tensor, n_units: int) -> dict[int, list[int]]:
    """Flat (layer-major) unit indices as ``{layer: unit indices}``."""
    out: dict[int, list[int]] = {}
    for index in sorted(flat.tolist()):
        out.setdefault(index // n_units, []).append(index % n_units)
    return out


def audit_summary(exact_mean: Float[torch.Tensor, "units"], mark: torch.Tensor, top_k: int,
                  kind: ComponentKind, n_units: int, names: list[str] | None = None) -> dict:
    """What the audit says about the units left unverified: ``exact_mean`` ``[L * U]`` (NaN where
    unverified), ``mark`` ``[L * U]`` (1 screened top, 2 audit, 0 unverified); ``names``: each
    entry's label when the entries are not ``L.U`` (cells ``L.U@P``)."""
    verified = mark > 0
    magnitude = exact_mean.abs()
    k = min(top_k, int(verified.sum()))
    tau = float(magnitude[verified].topk(k).values[-1]) if k else float("inf")
    audit = mark == 2
    rest = int((mark != 1).sum())  # the population the audit was drawn from
    above = int((magnitude[audit] > tau).sum())
    estimate, low, high = false_negative_interval(above, int(audit.sum()), rest, LEVEL)

    def labels(mask):
        return [names[i] if names else f"{i // n_units}.{i % n_units}"
                for i in torch.nonzero(mask).flatten().tolist()]

    return {"units": int(mark.numel()), "exact": int(verified.sum()),
            "unverified": int((~verified).sum()), "screened_top": labels(mark == 1),
            "audit_units": labels(audit), "threshold": tau, "audit_above_threshold": above,
            "false_negatives": {"estimate": estimate, "low": low, "high": high,
                                "meaning": f"unverified {kind.unit}s whose |mean exact score| "
                                           f"exceeds the {k}-th largest verified one"}}


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_mass(low: int, high: int, population: int, successes: int, draws: int) -> float:
    """P(low <= X <= high) for X the successes among ``draws`` drawn without replacement
    (summed term by term, so that neither tail is computed as 1 - the other)."""
    low = max(low, 0, draws - (population - successes))
    high = min(high, successes, draws)
    if high < low:
        return 0.0
    total = _log_comb(population, draws)
    return min(1.0, sum(math.exp(_log_comb(successes, j) + _log_comb(population - successes,
                                                                     draws - j) - total)
                        for j in range(low, high + 1)))


def false_negative_interval(above: int, draws: int, population: int, level: float
                            ) -> tuple[float, int, int]:
    """Estimate and ``level`` interval of ``F = D - above``, the units of ``population`` above the
    threshold that the audit (``draws`` of them, uniform without replacement) did not see, from
    ``above`` seen among the draws. ``D`` is bounded by inverting the hypergeometric tails (each
    at (1 - level) / 2), the exact interval for a sample without replacement."""
    unseen = population - draws
    if unseen == 0:
        return 0.0, 0, 0
    if draws == 0:
        return float("nan"), 0, unseen
    tail = (1 - level) / 2
    lowest, highest = above, above + unseen  # D can be no less, no more

    def first(pred) -> int:  # smallest D in [lowest, highest] with pred(D), pred monotone
        lo, hi = lowest, highest + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if pred(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    # P(X >= above | D) grows with D; P(X <= above | D) falls with D
    d_low = first(lambda d: hypergeom_mass(above, draws, population, d, draws) >= tail)
    d_high = first(lambda d: hypergeom_mass(0, above, population, d, draws) < tail) - 1
    return above * unseen / draws, max(0, d_low - above), max(0, d_high - above)


__all__ = ["SCREENS", "SCREEN_DEFAULTS", "screened_patching", "choose_units",
           "false_negative_interval", "audit_summary", "check_screen_settings"]
