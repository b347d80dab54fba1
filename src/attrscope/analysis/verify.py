"""Who is right? Check attributions by ablating the components they flag.

- :func:`verification_rows`: the mean metric change (with a bootstrap interval over prompts)
  when ablating each result's top k, the components only one method flags and the AND-like /
  OR-like components each patching method calls, each compared with the null of sets of the same
  size (every such set when there are at most ``n_null``, else ``n_null`` random ones): an
  empirical p-value, the percentile, an effect size in units of the null's spread, and a verdict
  in words;
- :func:`faithfulness_curve`: MIB-style faithfulness of the circuit made of a result's top
  components, everything else of the kind ablated: f = (m(circuit) - m(empty)) / (m(model) -
  m(empty)), m being the mean metric over samples, at 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 %
  of the kind's components (at least one component). CPR is the area under f and CMD the area
  under |1 - f|, by the trapezoidal rule over the fraction of components (0.001 to 1), so a
  perfect circuit at every size has CPR 0.999 and CMD 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..arch import config_of
from ..components import parse_label
from ..scores import Scores
from .ablation import Ablator, Component, all_components
from .agreement import bootstrap_weights, percentile_interval

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def ranked_components(scores: Scores, kind: str) -> list[Component]:
    """Components of ``kind`` by |mean score| over samples, largest first (ties by position)."""
    mean = scores.mean(kind)
    n_units = mean.shape[1]
    # unscored components (NaN, e.g. screened ap's unverified units) rank last
    order = torch.argsort(mean.flatten().abs().nan_to_num(-1.0), descending=True, stable=True)
    at = scores.position_labels
    if at is not None:  # (unit, position) cells, layer-major then unit then position
        return [Component(kind, int(c) // (n_units * len(at)), int(c) // len(at) % n_units,
                          at[int(c) % len(at)]) for c in order]
    return [Component(kind, int(c) // n_units, int(c) % n_units) for c in order]


def top_components(scores: Scores, kind: str, k: int) -> list[Component]:
    return ranked_components(scores, kind)[:k]


def null_sets(kind: str, cfg, size: int, n_null: int, seed: int,
              pool: list[Component] | None = None) -> tuple[list[list[Component]], bool]:
    """The null of a set of ``size`` components: every such set when there are at most
    ``n_null`` of them (returns exhaustive=True), else ``n_null`` random sets of distinct
    components drawn with a generator seeded by ``seed`` and ``size``; from ``pool`` (default:
    every unit of ``kind``; (unit, position) cells for position-resolved results)."""
    pool = all_components(kind, cfg) if pool is None else pool
    if math.comb(len(pool), size) <= n_null:
        return [list(c) for c in itertools.combinations(pool, size)], True
    generator = torch.Generator().manual_seed(seed * 100_003 + size)
    picks = torch.rand(n_null, len(pool), generator=generator).argsort(dim=1)[:, :size]
    return [[pool[int(j)] for j in row] for row in picks], False


def _labels(components: Sequence[Component]) -> str:
    return " ".join(c.label for c in components)


def mean_interval(changes: torch.Tensor, n_boot: int, seed: int, level: float = 0.95
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over samples of ``changes`` ``[S, n]`` with a percentile bootstrap interval over
    samples: three ``[S]`` tensors (mean, low, high)."""
    n = changes.shape[1]
    x = changes.double()
    means = bootstrap_weights(n, n_boot, seed) @ x.T / n  # [B, S]
    tail = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return x.mean(dim=1), q[0], q[1]


# Two metric changes closer than this (relative to the largest |change| of the null, at least 1)
# are a tie: float32 ablations of the same set in different batches differ by rounding, and a
# tie must not be decided by it (it would move the p-value by 1 / (N + 1) between machines).
TIE_TOLERANCE = 1e-5


def null_comparison(change: float, null: torch.Tensor) -> dict[str, float]:
    """Where a set's mean metric change falls among its null ``[N]``: ``p_value`` (the share,
    with +1 smoothing, of null sets whose |change| is at least as large, ties within
    :data:`TIE_TOLERANCE` counted as at least as large), ``percentile`` (the share of null sets
    it changes the metric more than, by magnitude, beyond that tolerance) and ``effect_size``
    ((change - null mean) / null sd)."""
    null = null.double()
    tie = TIE_TOLERANCE * max(1.0, float(null.abs().max()) if null.numel() else 0.0, abs(change))
    larger = int((null.abs() >= abs(change) - tie).sum())
    sd = float(null.std()) if null.numel() > 1 else float("nan")
    return {"null_mean": float(null.mean()), "null_sd": sd,
            "p_value": (1 + larger) / (1 + null.numel()),
            "percentile": float((null.abs() < abs(change) - tie).double().mean()),
            "effect_size": (change - float(null.mean())) / sd if sd and sd > 0 else float("nan")}


def verdict(row: dict, alpha: float) -> str:
    """The verification of one set in words."""
    pool = (f"the {row['n_null']} possible sets" if row["exhaustive"]
            else f"{row['n_null']} random sets")
    share = ("every one of" if row["percentile"] >= 1
             else f"{math.floor(100 * row['percentile'])} % of")
    words = (f"changes the metric more than {share} {pool} of size {row['size']} "
             f"(p = {row['p_value']:.3g}, {row['effect_size']:+.1f} sd from their mean)")
    conclusion = "confirmed" if row["p_value"] <= alpha else "indistinguishable from random sets"
    return f"{conclusion}: {words}"


def named_sets(results: dict[str, Scores], kind: str, k: int,
               called: dict[str, dict[str, list[dict]]] | None = None
               ) -> list[tuple[str, str, list[Component]]]:
    """(set name, source, components) of every set verification ablates: each result's top
    ``k``, the components only one of two same-direction results ranks in its top ``k``, and the
    AND-like / OR-like components each patching method calls (``called``: method -> sets)."""
    named: list[tuple[str, str, list[Component]]] = []
    tops = {label: top_components(s, kind, k) for label, s in results.items()}
    for label, comps in tops.items():
        named.append((f"top {k}", label, comps))
    labels = list(tops)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if results[a].direction != results[b].direction:
                continue
            only_a = [c for c in tops[a] if c not in set(tops[b])]
            only_b = [c for c in tops[b] if c not in set(tops[a])]
            named.append((f"top {k}, not in {b.split(' ')[0]}'s", a, only_a))
            named.append((f"top {k}, not in {a.split(' ')[0]}'s", b, only_b))
    for method, sets in (called or {}).items():
        for which in ("and", "or"):
            comps = [Component(kind, e["layer"], e["unit"], _position(e)) for e in sets[which]]
            named.append((f"{which.upper()}-like", method, comps))
    return [entry for entry in named if entry[2]]


def _position(entry: dict) -> str | int | None:
    """The position of a latent entry's component (``L.U@P``), None over all positions."""
    return parse_label(entry["component"]).position if "component" in entry else None


@dataclass(frozen=True)
class NullTest:
    """How a set's ablation is tested: against ``n_null`` same-size random sets (all of them when
    there are fewer), a bootstrap interval over prompts from ``n_boot`` resamples, ``seed`` for
    both, confirmed when the p-value is at most ``alpha``."""

    n_null: int = 200
    seed: int = 0
    n_boot: int = 1000
    alpha: float = 0.05


def verification_rows(ablator: Ablator, results: dict[str, Scores], kind: str, k: int,
                      called: dict[str, dict[str, list[dict]]] | None = None,
                      test: NullTest = NullTest()) -> list[dict[str, object]]:
    """Every set of :func:`named_sets` ablated, against the null of same-size sets.

    Each row: set, source, size, components, metric_change (mean over samples of ablated -
    unablated) with its bootstrap interval (ci_low, ci_high), the null's mean and sd, p_value,
    percentile, effect_size (:func:`null_comparison`), n_null, exhaustive and the verdict in
    words (confirmed when p_value <= ``test.alpha``). One ``random`` row per size describes its null.
    """
    named = named_sets(results, kind, k, called)
    changes = ablator.metrics([comps for _, _, comps in named]) - ablator.base  # [S, n]
    mean, low, high = mean_interval(changes, test.n_boot, test.seed)
    nulls = {}
    for size in sorted({len(c) for _, _, c in named}):
        sets, exhaustive = null_sets(kind, config_of(ablator.model), size, test.n_null, test.seed,
                                     ablator.components(kind))
        nulls[size] = (ablator.metric_change(sets), exhaustive)
    rows = []
    for (what, source, comps), m, lo, hi in zip(named, mean.tolist(), low.tolist(), high.tolist()):
        null, exhaustive = nulls[len(comps)]
        row = {"set": what, "source": source, "size": len(comps), "components": _labels(comps),
               "metric_change": m, "ci_low": lo, "ci_high": hi, **null_comparison(m, null),
               "n_null": int(null.numel()), "exhaustive": exhaustive}
        row["verdict"] = verdict(row, test.alpha)
        rows.append(row)
    for size, (null, exhaustive) in nulls.items():
        q = torch.quantile(null.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
        rows.append({"set": f"random sets of size {size}", "source": "random", "size": size,
                     "components": "", "metric_change": float(null.mean()),
                     "ci_low": float(q[0]), "ci_high": float(q[1]),
                     "null_mean": float(null.mean()),
                     "null_sd": float(null.std()) if null.numel() > 1 else 0.0,
                     "p_value": float("nan"), "percentile": float("nan"),
                     "effect_size": float("nan"), "n_null": int(null.numel()),
                     "exhaustive": exhaustive,
                     "verdict": f"{'all' if exhaustive else null.numel()} sets; middle 95 % of "
                                f"their changes: [{float(q[0]):+.3g}, {float(q[1]):+.3g}]"})
    return rows


def faithfulness_note(kind: str, rankings: dict[str, list[Component]], sizes: Sequence[int]
                      ) -> str:
    """Why faithfulness curves of several results coincide: the sizes at which every result
    keeps the same set of components (then its f is the same number), in words."""
    if len(rankings) < 2:
        return ""
    same = [size for size in dict.fromkeys(sizes)
            if len({frozenset(r[:size]) for r in rankings.values()}) == 1]
    distinct = list(dict.fromkeys(sizes))
    total = max(distinct)
    if len(same) == len(distinct):
        return (f"All {len(rankings)} {kind} results keep the same components at every size "
                f"evaluated ({', '.join(map(str, distinct))} of {total}), so their faithfulness "
                "curves are identical: the methods agree on the ranking where it matters here.")
    shared = [s for s in same if s < total]
    text = (f"The {kind} curves coincide at sizes {', '.join(map(str, shared))} of {total}, "
            "where every result keeps the same set of components" if shared else
            f"The {kind} results keep different sets already at the smallest size")
    repeats = len(sizes) - len(distinct)
    if repeats:
        text += (f"; {repeats} of the {len(sizes)} fractions round to a size already evaluated "
                 f"(with {total} components, every fraction below {1.5 / total:.1%} keeps one)")
    return text + ". CPR/CMD differ only where the kept sets differ."


def faithfulness_curve(ablator: Ablator, scores: Scores, kind: str,
                       fractions: Sequence[float] = FRACTIONS, n_boot: int = 1000,
                       seed: int = 0) -> dict[str, object]:
    """Faithfulness of the top-x % circuits of ``scores`` (see the module docstring).

    Returns fractions, sizes (components kept), f per fraction, cpr, cmd, m_model, m_empty, and
    their bootstrap intervals over prompts (:func:`curve_intervals`).
    """
    ranked = ranked_components(scores, kind)
    total = len(ranked)
    sizes = [min(total, max(1, round(f * total))) for f in fractions]
    sets = [[]] + [ranked] + [ranked[size:] for size in sizes]  # ablate what is outside
    return {"sizes": sizes, **curve_from_metrics(ablator.metrics(sets), fractions, n_boot, seed)}


def curve_from_metrics(metrics: torch.Tensor, fractions: Sequence[float], n_boot: int = 1000,
                       seed: int = 0) -> dict[str, object]:
    """The faithfulness curve of node and edge circuits alike, from ``metrics`` ``[2 + F, n]``:
    the metric per sample of the whole model, the empty circuit and the F circuits (at
    ``fractions``). Returns fractions, f per fraction (f = (m(circuit) - m(empty)) / (m(model) -
    m(empty)), NaN when the model and the empty circuit agree), cpr (area under f), cmd (area
    under |1 - f|), m_model, m_empty, and their bootstrap intervals (:func:`curve_intervals`)."""
    means = metrics.mean(dim=1).double()
    m_model, m_empty, m_circuit = means[0], means[1], means[2:]
    gap = m_model - m_empty
    f = (m_circuit - m_empty) / gap if gap != 0 else torch.full_like(m_circuit, float("nan"))
    x = torch.tensor(list(fractions), dtype=torch.float64)
    return {"fractions": list(fractions), "f": f.tolist(),
            "cpr": float(torch.trapezoid(f, x)), "cmd": float(torch.trapezoid((1 - f).abs(), x)),
            "m_model": float(m_model), "m_empty": float(m_empty),
            **curve_intervals(metrics, fractions, n_boot, seed)}


def curve_intervals(metrics: torch.Tensor, fractions: Sequence[float], n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict[str, object]:
    """Percentile bootstrap intervals over prompts of a faithfulness curve.

    metrics: ``[2 + F, n]`` metric per sample of the whole model, the empty circuit and the F
    circuits (at ``fractions``). Each resample draws n prompts with replacement and recomputes
    m(model), m(empty), every m(circuit), f, CPR and CMD from them, so the intervals carry the
    uncertainty of the normalisation too. Returns f_low, f_high (lists of F), cpr_low, cpr_high,
    cmd_low, cmd_high, n_boot and confidence_level; resamples with m(model) = m(empty) (f
    undefined) are left out.
    """
    n = metrics.shape[1]
    means = bootstrap_weights(n, n_boot, seed) @ metrics.double().T / n  # [B, 2 + F]
    gap = means[:, :1] - means[:, 1:2]
    f = (means[:, 2:] - means[:, 1:2]) / gap.where(gap != 0, torch.nan)  # [B, F]
    x = torch.tensor(list(fractions), dtype=torch.float64)
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    f_q = torch.nanquantile(f, q, dim=0)  # [2, F]
    cpr_low, cpr_high = percentile_interval(torch.trapezoid(f, x, dim=1), level)
    cmd_low, cmd_high = percentile_interval(torch.trapezoid((1 - f).abs(), x, dim=1), level)
    return {"f_low": f_q[0].tolist(), "f_high": f_q[1].tolist(), "cpr_low": cpr_low,
            "cpr_high": cpr_high, "cmd_low": cmd_low, "cmd_high": cmd_high, "n_boot": n_boot,
            "confidence_level": level}
