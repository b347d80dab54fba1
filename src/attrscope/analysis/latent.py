"""Direction asymmetry and latent AND/OR components.

Patching one component at a time answers different questions in the two directions:

- *denoising* (run corrupted, patch in the clean activation) asks whether the component is
  **sufficient** on its own to restore the behaviour;
- *noising* (run clean, patch in the corrupted activation) asks whether it is **necessary**.

For a component that acts alone and additively, both have the same size (denoising = -noising).
For two components that feed an AND (the behaviour needs both), patching either one into the
corrupted run restores nothing (the other is still corrupted) while corrupting either one in the
clean run destroys the behaviour: |denoising| < |noising|. For an OR (either suffices), patching
either into the corrupted run restores the behaviour while corrupting one of them in the clean run
changes nothing (the other still carries it): |denoising| > |noising|.

So the asymmetry of a component is, per sample and then averaged over samples,

    asymmetry = |denoising score| - |noising score|

divided by the largest mean |score| of either direction over all components of the kind (so it
lies in [-1, 1]; a signed maximum would flip signs or explode when the maximum is negative or near
zero). **Negative = AND-like** (necessary, not sufficient alone); **positive = OR-like**
(sufficient alone, not necessary).

Uncertainty: the asymmetry gets a percentile bootstrap interval over prompts (the normalising
scale is held fixed at its full-data value, so the interval is that of the mean difference).
A patching method **calls** a component AND-like or OR-like only when the interval excludes 0
*and* |asymmetry| is at least ``min_asymmetry`` (default 0.1: a tenth of the largest mean |score|
of the kind). Integrated gradients gets no AND/OR sets of its own: along a straight path it is
antisymmetric between directions when the whole input moves, so its asymmetry measures how far
the rest of the run (everything not interpolated) differs between the two directions. The seed
study's **latent** criterion is the contrast: a component is latent when the patching method
calls it (above) and the contrast, patching asymmetry - IG asymmetry (paired bootstrap over the
same prompts), is called by the same rule with the same sign: patching is asymmetric and IG is
not, by a margin clear of 0 and at least ``min_asymmetry``. (IG's own interval containing 0 is
too weak a test: on an exact model it has width 0 around a rounding-size value, and on a real
one IG's asymmetry can be clearly nonzero yet much smaller than patching's.) When no component qualifies, :func:`latent_analysis` says so and lists the closest
candidates (largest patching |asymmetry|) labelled as candidates, never as findings.
"""

from __future__ import annotations

import torch

from ..scores import EDGES, Scores
from .agreement import bootstrap_weights

MIN_ASYMMETRY = 0.1  # default threshold, in units of the largest mean |score| of the kind
GRADIENT_PATH_METHODS = ("ig",)  # methods whose asymmetry is the contrast, not a finding


def asymmetry_values(denoising: torch.Tensor, noising: torch.Tensor) -> torch.Tensor:
    """Normalised asymmetry per component.

    denoising, noising: ``[n_samples, *components]`` scores of the same components.
    Returns ``[*components]``: mean over samples of |denoising| - |noising|, divided by the
    largest mean |score| of either direction over components (0 everywhere if all scores are 0).
    """
    if denoising.shape != noising.shape:
        raise ValueError(f"Denoising scores {tuple(denoising.shape)} and noising scores "
                         f"{tuple(noising.shape)} must have the same shape.")
    d, n = denoising.double().abs(), noising.double().abs()
    raw = (d - n).mean(dim=0)
    scale = asymmetry_scale(denoising, noising)
    return raw / scale if scale > 0 else raw


def asymmetry_scale(denoising: torch.Tensor, noising: torch.Tensor) -> torch.Tensor:
    """The normaliser of :func:`asymmetry_values`: the largest mean |score| of either direction
    over components (a 0-d float64 tensor)."""
    d, n = denoising.double().abs(), noising.double().abs()
    # components not scored (NaN, e.g. screened ap's unverified units) do not set the scale
    return torch.maximum(d.mean(dim=0).nan_to_num(0.0).max(), n.mean(dim=0).nan_to_num(0.0).max())


def per_sample_asymmetry(denoising: torch.Tensor, noising: torch.Tensor) -> torch.Tensor:
    """``[n, C]`` float64: each sample's |denoising| - |noising| per component (flattened),
    divided by the full-data :func:`asymmetry_scale`; its mean over samples is
    :func:`asymmetry_values`."""
    n = denoising.shape[0]
    diff = (denoising.double().abs() - noising.double().abs()).reshape(n, -1)
    scale = asymmetry_scale(denoising, noising)
    return diff / scale if scale > 0 else diff


# Components per block of the bootstrap: its [n_boot, block] float64 means and their sort stay
# near 64 MB (all of a Llama-3.2-1B's 131,072 neurons at once took over 3 GB).
BOOT_BLOCK = 8192


def mean_intervals(x: torch.Tensor, shape: torch.Size, n_boot: int, seed: int, level: float,
                   block: int = BOOT_BLOCK) -> dict[str, torch.Tensor]:
    """Mean over samples of ``x`` ``[n, C]`` with its percentile bootstrap interval (the seeded
    resamples of :func:`~attrscope.analysis.agreement.bootstrap_weights`, one matrix product per
    ``block`` components): ``value``, ``low``, ``high``, each reshaped to ``shape``."""
    n = x.shape[0]
    weights = bootstrap_weights(n, n_boot, seed)
    tail = (1 - level) / 2
    levels = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    q = torch.cat([torch.quantile(weights @ x[:, i:i + block] / n, levels, dim=0)  # [2, block]
                   for i in range(0, x.shape[1], block)], dim=1)
    return {"value": x.mean(0).reshape(shape), "low": q[0].reshape(shape),
            "high": q[1].reshape(shape)}


def asymmetry_intervals(denoising: torch.Tensor, noising: torch.Tensor, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, torch.Tensor]:
    """Asymmetry with a percentile bootstrap interval over samples (prompts).

    denoising, noising: ``[n_samples, *components]``. Returns ``value``, ``low``, ``high``, each
    ``[*components]``; the scale is fixed at its full-data value.
    """
    return mean_intervals(per_sample_asymmetry(denoising, noising), denoising.shape[1:],
                          n_boot, seed, level)


def contrast_intervals(patching: tuple[torch.Tensor, torch.Tensor],
                       ig: tuple[torch.Tensor, torch.Tensor], n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict[str, torch.Tensor]:
    """The seed's contrast, patching asymmetry - IG asymmetry, with a paired bootstrap interval
    (the same resampled prompts for both). patching, ig: (denoising, noising) scores
    ``[n_samples, *components]``. Returns ``value``, ``low``, ``high`` ``[*components]``."""
    x = per_sample_asymmetry(*patching) - per_sample_asymmetry(*ig)
    return mean_intervals(x, patching[0].shape[1:], n_boot, seed, level)


def _check_directions(denoising: Scores, noising: Scores, kind: str) -> None:
    if denoising.direction != "denoising" or noising.direction != "noising":
        raise ValueError(f"Pass the denoising result first and the noising result second; got "
                         f"{denoising.direction!r} and {noising.direction!r}.")
    if denoising.method != noising.method:
        raise ValueError(f"Asymmetry compares one method in two directions; got "
                         f"{denoising.method!r} and {noising.method!r}.")
    for s in (denoising, noising):
        if kind not in s:
            raise ValueError(f"The {s.direction} result has no {kind!r} scores.")


def asymmetry(denoising: Scores, noising: Scores, kind: str) -> torch.Tensor:
    """``[n_layers, n_units]`` normalised asymmetry of one method's two directions (see the
    module docstring: negative = AND-like, positive = OR-like)."""
    _check_directions(denoising, noising, kind)
    return asymmetry_values(denoising[kind], noising[kind])


def called(value: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
           min_asymmetry: float = MIN_ASYMMETRY) -> torch.Tensor:
    """``[*components]`` int: -1 AND-like, +1 OR-like, 0 not called. Called only when the
    interval [low, high] excludes 0 and |value| >= ``min_asymmetry``."""
    excludes_zero = (low > 0) | (high < 0)
    big = value.abs() >= min_asymmetry
    return torch.where(excludes_zero & big, torch.sign(value), torch.zeros_like(value)).long()


def entry_labels(scores: Scores, kind: str, shape: tuple[int, ...]) -> list[str]:
    """The label of each component of an entry: the result's own (``L.U``, ``L``, ``L.U@P``,
    ``5.5 -> 8.6 (q)``, ``5.5 -> 8.6 (q) @S2``)."""
    return scores.labels(kind)


def entry_shape(kind: str, est: dict) -> tuple[int, ...]:
    """The shape whose flat index numbers the entries: the asymmetry's, with edges (which have
    no layer axis) as the units of layer 0, so that an entry's ``unit`` is its edge and, by
    position, its ``position`` the position's index."""
    shape = tuple(est["value"].shape)
    return (1, *shape) if kind == EDGES else shape


def _entry(c: int, shape: tuple[int, ...], labels: list[str], est: dict, mean_d, mean_n,
           ig: dict | None) -> dict[str, object]:
    """Component ``c`` of the flat (layer-major) ``shape`` ``[layers, units(, positions)]``
    (edges: ``[1, edges(, positions)]``, :func:`entry_shape`): a position-resolved component (``L.U@P``) is a (unit,
    position) cell, ``position`` its index on the position axis."""
    where = [int(i) for i in torch.unravel_index(torch.tensor(c), tuple(shape))]
    entry = {"component": labels[c], "layer": where[0], "unit": where[1],
             **({"position": where[2]} if len(shape) > 2 else {}), "index": c,
             "asymmetry": float(est["value"].flatten()[c]),
             "low": float(est["low"].flatten()[c]), "high": float(est["high"].flatten()[c]),
             "denoising": float(mean_d[c]), "noising": float(mean_n[c])}
    if ig is not None:
        entry.update({f"ig_{key}": float(ig[key].flatten()[c])
                      for key in ("value", "low", "high")})
    return entry


def latent_components(denoising: Scores, noising: Scores, kind: str,
                      min_asymmetry: float = MIN_ASYMMETRY, n_boot: int = 1000, seed: int = 0,
                      ig: dict | None = None, est: dict | None = None
                      ) -> dict[str, list[dict[str, object]]]:
    """The components one patching method calls AND-like (``"and"``) or OR-like (``"or"``):
    interval excluding 0 and |asymmetry| >= ``min_asymmetry``, largest |asymmetry| first. Each
    entry: label, layer, unit, asymmetry, low, high, both directions' mean scores, and (with
    ``ig``, the :func:`asymmetry_intervals` of integrated gradients) ``ig_value/low/high``.
    ``est``: this method's intervals if already computed (at any level), else 95 % intervals
    from ``n_boot`` resamples."""
    _check_directions(denoising, noising, kind)
    if est is None:
        est = asymmetry_intervals(denoising[kind], noising[kind], n_boot, seed)
    shape = entry_shape(kind, est)
    labels = entry_labels(denoising, kind, shape)
    calls = called(est["value"], est["low"], est["high"], min_asymmetry).flatten()
    mean_d, mean_n = denoising.mean(kind).flatten(), noising.mean(kind).flatten()
    order = torch.argsort(est["value"].flatten().abs(), descending=True, stable=True)
    sets: dict[str, list[dict[str, object]]] = {"and": [], "or": []}
    for c in order.tolist():
        if calls[c] != 0:
            sets["and" if calls[c] < 0 else "or"].append(
                _entry(c, shape, labels, est, mean_d, mean_n, ig))
    return sets


def latent_analysis(results: dict[tuple[str, str], Scores], kind: str,
                    min_asymmetry: float = MIN_ASYMMETRY, n_boot: int = 1000, seed: int = 0,
                    level: float = 0.95, n_closest: int = 5) -> dict[str, object]:
    """Asymmetry intervals of every method run in both directions, AND/OR calls of the patching
    methods, and the latent components of the seed's contrast (patching calls it, and patching
    - IG asymmetry is called with the same sign) for every patching method when ``ig`` was run.

    results: (method, direction) -> Scores. Returns ``asymmetry`` (method -> intervals),
    ``calls`` (patching method -> {"and", "or"}), ``latent`` (patching method -> {"and", "or"}),
    ``closest`` (patching method -> the ``n_closest`` largest-|asymmetry| components not called
    latent, as candidates), ``threshold``, ``level`` and ``detector`` (the IG method or None).
    """
    methods = [m for m, d in results if d == "denoising" and (m, "noising") in results]
    asym = {m: asymmetry_intervals(results[(m, "denoising")][kind], results[(m, "noising")][kind],
                                   n_boot, seed, level) for m in methods}
    detector = next((m for m in methods if m in GRADIENT_PATH_METHODS), None)
    ig = asym.get(detector)
    out = {"asymmetry": asym, "calls": {}, "latent": {}, "closest": {}, "threshold": min_asymmetry,
           "level": level, "detector": detector, "kind": kind}
    for m in methods:
        if m in GRADIENT_PATH_METHODS:
            continue
        sets = latent_components(results[(m, "denoising")], results[(m, "noising")], kind,
                                 min_asymmetry, n_boot, seed, ig, asym[m])
        out["calls"][m] = sets
        if ig is None:
            continue
        contrast = contrast_intervals(
            (results[(m, "denoising")][kind], results[(m, "noising")][kind]),
            (results[(detector, "denoising")][kind], results[(detector, "noising")][kind]),
            n_boot, seed, level)
        calls = called(contrast["value"], contrast["low"], contrast["high"], min_asymmetry)
        for entries in sets.values():
            _add_contrast(entries, contrast, calls)
        # latent: called, and patching's asymmetry exceeds IG's by a called margin of its sign
        out["latent"][m] = {which: [e for e in sets[which]
                                    if e["contrast_call"] == (-1 if which == "and" else 1)]
                            for which in sets}
        out["closest"][m] = closest_candidates(results[(m, "denoising")],
                                               results[(m, "noising")], kind, asym[m], ig,
                                               out["latent"][m], n_closest, min_asymmetry)
        _add_contrast(out["closest"][m], contrast, calls)
        for e in out["closest"][m]:
            e["why"] = candidate_reason(e, min_asymmetry)
    return out


def _add_contrast(entries: list[dict], contrast: dict, calls: torch.Tensor) -> None:
    """Add ``contrast``, ``contrast_low``, ``contrast_high`` and ``contrast_call`` (-1, 0, +1)
    of each entry's component to the entries."""
    for e in entries:
        i = e["index"]
        e.update({"contrast": float(contrast["value"].flatten()[i]),
                  "contrast_low": float(contrast["low"].flatten()[i]),
                  "contrast_high": float(contrast["high"].flatten()[i]),
                  "contrast_call": int(calls.flatten()[i])})


def closest_candidates(denoising: Scores, noising: Scores, kind: str, est: dict, ig: dict,
                       latent: dict[str, list], n: int, min_asymmetry: float = MIN_ASYMMETRY
                       ) -> list[dict[str, object]]:
    """The ``n`` components with the largest patching |asymmetry| that are not latent:
    candidates to look at, not findings (:func:`latent_analysis` adds why each is not)."""
    shape = entry_shape(kind, est)
    labels = entry_labels(denoising, kind, shape)
    found = {e["component"] for which in latent.values() for e in which}
    mean_d, mean_n = denoising.mean(kind).flatten(), noising.mean(kind).flatten()
    order = torch.argsort(est["value"].flatten().abs().nan_to_num(-1.0), descending=True, stable=True)
    out = []
    for c in order.tolist():
        if labels[c] in found:
            continue
        out.append(_entry(c, shape, labels, est, mean_d, mean_n, ig))
        if len(out) == n:
            break
    return out


def candidate_reason(e: dict, min_asymmetry: float) -> str:
    """Why an entry of :func:`closest_candidates` is not latent, in words."""
    reasons = []
    if e["low"] <= 0 <= e["high"]:
        reasons.append("its patching interval contains 0")
    if abs(e["asymmetry"]) < min_asymmetry:
        reasons.append(f"|asymmetry| is below {min_asymmetry:g}")
    sign = 1 if e["asymmetry"] > 0 else -1
    if e.get("contrast_call") != sign:
        reasons.append(f"patching - IG asymmetry {e['contrast']:+.3f} [{e['contrast_low']:+.3f}, "
                       f"{e['contrast_high']:+.3f}] is not clear of 0 by {min_asymmetry:g} "
                       "with the same sign")
    return "; ".join(reasons) or "meets every criterion"
