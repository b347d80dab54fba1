"""Who is right? Check attributions by ablating the components they flag.

- :func:`verification_rows`: the mean metric change when ablating each result's top k, the
  components only one method flags, the latent AND and OR sets, and random sets of the same sizes
  (several seeds; mean and standard deviation);
- :func:`faithfulness_curve`: MIB-style faithfulness of the circuit made of a result's top
  components, everything else of the kind ablated: f = (m(circuit) - m(empty)) / (m(model) -
  m(empty)), m being the mean metric over samples, at 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 %
  of the kind's components (at least one component). CPR is the area under f and CMD the area
  under |1 - f|, by the trapezoidal rule over the fraction of components (0.001 to 1), so a
  perfect circuit at every size has CPR 0.999 and CMD 0.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..scores import Scores
from .ablation import Ablator, Component, all_components

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def ranked_components(scores: Scores, kind: str) -> list[Component]:
    """Components of ``kind`` by |mean score| over samples, largest first (ties by position)."""
    mean = scores.mean(kind)
    n_units = mean.shape[1]
    order = torch.argsort(mean.flatten().abs(), descending=True, stable=True)
    return [Component(kind, int(c) // n_units, int(c) % n_units) for c in order]


def top_components(scores: Scores, kind: str, k: int) -> list[Component]:
    return ranked_components(scores, kind)[:k]


def random_sets(kind: str, cfg, size: int, n_sets: int, seed: int) -> list[list[Component]]:
    """``n_sets`` random sets of ``size`` distinct components, seeds ``seed .. seed + n_sets - 1``."""
    pool = all_components(kind, cfg)
    sets = []
    for i in range(n_sets):
        generator = torch.Generator().manual_seed(seed + i)
        pick = torch.randperm(len(pool), generator=generator)[:size]
        sets.append([pool[int(j)] for j in pick])
    return sets


def _labels(components: Sequence[Component]) -> str:
    return " ".join(c.label for c in components)


def verification_rows(ablator: Ablator, results: dict[str, Scores], kind: str, k: int,
                      latent: dict[str, dict[str, list[dict]]] | None = None,
                      n_random: int = 5, seed: int = 0) -> list[dict[str, object]]:
    """Mean metric change (ablated - unablated, over samples) for each named set.

    results: label -> Scores; latent: method -> {"and": [...], "or": [...]} entries of
    :func:`attrscope.analysis.latent.latent_components`.
    """
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
    for method, sets in (latent or {}).items():
        for which in ("and", "or"):
            comps = [Component(kind, e["layer"], e["unit"]) for e in sets[which]]
            named.append((f"latent {which.upper()}", method, comps))
    named = [entry for entry in named if entry[2]]
    changes = ablator.metric_change([comps for _, _, comps in named])
    rows = [{"set": what, "source": source, "size": len(comps), "components": _labels(comps),
             "metric_change": float(change), "sd_over_random_sets": float("nan")}
            for (what, source, comps), change in zip(named, changes)]
    sizes = sorted({len(c) for _, _, c in named})
    for size in sizes:
        sets = random_sets(kind, ablator.model.cfg, size, n_random, seed)
        change = ablator.metric_change(sets)
        rows.append({"set": f"random {size} ({n_random} seeds)", "source": "random",
                     "size": size, "components": "",
                     "metric_change": float(change.mean()),
                     "sd_over_random_sets": float(change.std()) if n_random > 1 else 0.0})
    return rows


def faithfulness_curve(ablator: Ablator, scores: Scores, kind: str,
                       fractions: Sequence[float] = FRACTIONS) -> dict[str, object]:
    """Faithfulness of the top-x % circuits of ``scores`` (see the module docstring).

    Returns fractions, sizes (components kept), f per fraction, cpr, cmd, m_model, m_empty.
    """
    ranked = ranked_components(scores, kind)
    total = len(ranked)
    sizes = [min(total, max(1, round(f * total))) for f in fractions]
    sets = [[]] + [ranked] + [ranked[size:] for size in sizes]  # ablate what is outside
    means = ablator.metrics(sets).mean(dim=1).double()
    m_model, m_empty, m_circuit = means[0], means[1], means[2:]
    gap = m_model - m_empty
    f = (m_circuit - m_empty) / gap if gap != 0 else torch.full_like(m_circuit, float("nan"))
    x = torch.tensor(list(fractions), dtype=torch.float64)
    return {"fractions": list(fractions), "sizes": sizes, "f": f.tolist(),
            "cpr": float(torch.trapezoid(f, x)), "cmd": float(torch.trapezoid((1 - f).abs(), x)),
            "m_model": float(m_model), "m_empty": float(m_empty)}
