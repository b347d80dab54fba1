"""Latent-aware scores: one score per component (or edge) from a method's two directions.

A component that acts alone scores the same size in both directions (denoising = -noising);
a latent one does not: an AND input is necessary but not sufficient (large noising, small
denoising), an OR input sufficient but not necessary (the reverse); see
:mod:`attrscope.analysis.latent`. Noising alone misses the OR inputs and denoising alone the AND
inputs. The combinations here keep the **noising sign convention** (negative = the component is
needed for the behaviour; the denoising score enters as ``-denoising``, its noising-signed
counterpart):

- ``latent-mean`` (the seed study's MIB method): the noising score, except that each *latent*
  component gets the mean of both directions, ``(noising - denoising) / 2``;
- ``latent-larger``: the noising score, except that each latent component gets whichever of
  ``noising`` and ``-denoising`` has the larger |mean over samples|;
- ``mean`` and ``larger``: the same, for every component.

A component is *latent* when its asymmetry ``|denoising| - |noising|`` (per sample, normalised as
in :func:`~attrscope.analysis.latent.asymmetry_intervals`) has a bootstrap interval over prompts
that excludes 0 and a size of at least ``min_asymmetry`` (:func:`~attrscope.analysis.latent.
called`), or as given by ``latent``. The same rule serves nodes and edges.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float

from ..scores import Scores
from .latent import MIN_ASYMMETRY, _check_directions, asymmetry_intervals, called

COMBINATIONS = ("latent-mean", "latent-larger", "mean", "larger")


def latent_mask(denoising: Float[torch.Tensor, "n *c"], noising: Float[torch.Tensor, "n *c"],
                min_asymmetry: float = MIN_ASYMMETRY, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> Bool[torch.Tensor, "*c"]:
    """Which components are latent (module docstring), from per-sample scores of both
    directions."""
    est = asymmetry_intervals(denoising, noising, n_boot, seed, level)
    return called(est["value"], est["low"], est["high"], min_asymmetry) != 0


def combine_values(denoising: Float[torch.Tensor, "n *c"], noising: Float[torch.Tensor, "n *c"],
                   how: str, latent: Bool[torch.Tensor, "*c"]) -> Float[torch.Tensor, "n *c"]:
    """Per-sample combined scores in the noising sign convention (module docstring)."""
    if how not in COMBINATIONS:
        raise ValueError(f"Unknown combination {how!r}; choose from {', '.join(COMBINATIONS)}.")
    aligned = -denoising
    if how.endswith("mean"):
        both = (noising + aligned) / 2
    else:
        larger = aligned.nanmean(0).abs() > noising.nanmean(0).abs()
        both = torch.where(larger, aligned, noising)
    chosen = latent if how.startswith("latent") else torch.ones_like(latent)
    return torch.where(chosen, both, noising)


def combine_directions(denoising: Scores, noising: Scores, how: str = "latent-mean", *,
                       latent: dict[str, torch.Tensor] | None = None,
                       min_asymmetry: float = MIN_ASYMMETRY, n_boot: int = 1000,
                       seed: int = 0) -> Scores:
    """One method's denoising and noising results combined into one :class:`Scores` (module
    docstring), every kind they share; ``latent``: ``{kind: bool [n_layers, n_units]}`` to use
    instead of the bootstrap rule. The result is in the noising sign convention, its method
    named ``METHOD:HOW``, the latent components recorded in ``meta["combined"]`` and
    ``extras["latent.KIND"]``."""
    kinds = [k for k in denoising.kinds if k in noising]
    if not kinds:
        raise ValueError(f"The two results share no kind ({denoising.kinds} and "
                         f"{noising.kinds}).")
    values, extras, counts = {}, {}, {}
    for kind in kinds:
        _check_directions(denoising, noising, kind)
        d, n = denoising[kind], noising[kind]
        if d.shape != n.shape:
            raise ValueError(f"{kind}: the two directions' scores have shapes {tuple(d.shape)} "
                             f"and {tuple(n.shape)}; they must score the same samples.")
        mask = (latent or {}).get(kind)
        if mask is None:
            mask = latent_mask(d, n, min_asymmetry, n_boot, seed)
        mask = mask.to(torch.bool).reshape(d.shape[1:])
        values[kind] = combine_values(d, n, how, mask).to(n.dtype)
        extras[f"latent.{kind}"] = mask
        counts[kind] = int(mask.sum())
    meta = {**noising.meta, "method": f"{noising.method}:{how}", "direction": "noising",
            "combined": {"how": how, "from": noising.method, "latent": counts,
                         "min_asymmetry": min_asymmetry, "n_boot": n_boot, "seed": seed,
                         "sign": "noising convention: negative = needed; the denoising score "
                                 "enters as -denoising"}}
    return Scores(values=values, meta=meta, extras=extras)
