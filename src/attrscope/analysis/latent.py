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
(sufficient alone, not necessary). Latent components are the top components by |asymmetry|,
split by the sign of their asymmetry — never by |asymmetry|, which would give both sets the same
members. Integrated gradients along a straight path is exactly antisymmetric between directions
(reversing the path negates every attribution), so its asymmetry is zero up to quadrature error:
a component flagged by patching asymmetry and not by IG asymmetry is latent.
"""

from __future__ import annotations

import torch

from ..scores import Scores
from .agreement import component_labels


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
    scale = torch.maximum(d.mean(dim=0).max(), n.mean(dim=0).max())
    return raw / scale if scale > 0 else raw


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


def latent_components(denoising: Scores, noising: Scores, kind: str, k: int = 10
                      ) -> dict[str, list[dict[str, object]]]:
    """The ``k`` components with the largest |asymmetry|, split by sign into ``"and"``
    (asymmetry < 0) and ``"or"`` (asymmetry > 0), each entry with its label, layer, unit,
    asymmetry and both directions' mean scores. Components with asymmetry exactly 0 go in
    neither set."""
    values = asymmetry(denoising, noising, kind)
    n_layers, n_units = values.shape
    labels = component_labels(n_layers, n_units)
    flat = values.flatten()
    mean_d, mean_n = denoising.mean(kind).flatten(), noising.mean(kind).flatten()
    order = torch.argsort(flat.abs(), descending=True, stable=True)[:k]
    sets: dict[str, list[dict[str, object]]] = {"and": [], "or": []}
    for c in order.tolist():
        if flat[c] == 0:
            continue
        entry = {"component": labels[c], "layer": c // n_units, "unit": c % n_units,
                 "asymmetry": float(flat[c]), "denoising": float(mean_d[c]),
                 "noising": float(mean_n[c])}
        sets["and" if flat[c] < 0 else "or"].append(entry)
    return sets
