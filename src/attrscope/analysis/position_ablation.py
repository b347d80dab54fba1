"""Ablation of (unit, position) cells, for verifying position-resolved results (issue 23).

A position-resolved result (``positions="each"`` or named positions) scores a unit at one token
position (``3.1@S2``, ``5@END`` for a one-unit site): a head, a neuron, or a unit of a site
(``resid_pre``, ``attn_out``, ``mlp_out``, ``q``, ``k``, ``v``). Verifying it replaces that unit
at that position alone, in each prompt at its own token for a named position
(``task.positions``), everything else of the run untouched: the same
:class:`~attrscope.analysis.ablation.Ablator` (``zero``, ``mean`` per position, ``other``; many
sets per forward; the sites' values at their points of the one forward), whose edits carry a
position mask (:class:`CellReplace`). The pool of the null sets and of the faithfulness curves
is every (unit, position) cell of the kind at the result's positions; positions outside the
setting are never ablated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from ..arch import config_of
from ..components import KINDS, Component
from ..sites import Positions
from .ablation import Ablator


@dataclass
class CellReplace:
    """At ``site`` ``(point, layer)``, the units of row r and position p where ``mask[r, p]`` is
    True take ``values`` (``[n or 1, pos >= P, units, *features]``, the batch's own, read by
    every stacked copy of an ``n``-sample batch: row ``c * n + i`` reads ``values[i]``)."""

    site: tuple[str, int]
    mask: Bool[Tensor, "R P units"]
    values: Tensor  # a one-unit site's (resid_pre, attn_out, mlp_out): [n or 1, pos, d]

    def hook_sites(self, n_layers: int) -> set[tuple[str, int]]:
        return {self.site}

    def spares_last_block(self, n_layers: int) -> bool:
        return self.site[1] < n_layers - 1

    def __call__(self, point: str, layer: int, x: Tensor) -> Tensor:
        if (point, layer) != self.site:
            return x
        n, P = self.values.shape[0], x.shape[1]
        tiled = x.view(x.shape[0] // n, n, *x.shape[1:])  # [copies, n, P, units, *features]
        m = self.mask[:, :P].reshape(tiled.shape[0], n, P, self.mask.shape[2],
                                     *([1] * (x.dim() - 3)))
        return torch.where(m.to(x.device), self.values[:, :P].to(x), tiled).view(x.shape)


class CellAblator(Ablator):
    """An :class:`Ablator` of (unit, position) cells: a component's ``position`` is a label of
    ``positions`` (a name, or a token index for ``"each"``), and it is replaced in each prompt
    at that position's token only."""

    def __init__(self, positions: Positions, model, task, **options):
        super().__init__(model, task, **options)
        self.labels = list(positions.labels)
        self.at = {label: positions.index[:, j] for j, label in enumerate(self.labels)}

    def components(self, kind: str) -> list[Component]:
        spec = KINDS[kind]
        n_units = spec.n_units(config_of(self.model))
        return [Component(kind, layer, unit, p) for layer in range(spec.n_layers(self.n_layers))
                for unit in range(n_units) for p in self.labels]

    def _check(self, components: Sequence[Component]) -> None:
        super()._check(components)
        for c in components:
            if c.position not in self.at:
                raise ValueError(f"{c.kind} {c.label}: this ablator replaces cells at positions "
                                 f"{self.labels}, not {c.position!r}.")

    def edits_for(self, sets: Sequence[Sequence[Component]], n: int, start: int = 0
                  ) -> list[CellReplace]:
        """One :class:`CellReplace` per site: ``sets[s]`` in rows ``s*n .. (s+1)*n - 1``, each
        cell at its prompt's own token, for a pass that computes positions from ``start`` on
        (a cell before ``start`` is one where the replacing value is the run's own)."""
        picks: dict[tuple[str, int], list[tuple[int, int, object]]] = {}
        for s, components in enumerate(sets):
            self._check(components)
            for c in components:
                picks.setdefault((c.kind, c.layer), []).append((s, c.unit, c.position))
        device = self.run_tokens.device
        seq = self.run_tokens.shape[1] - start
        rows = torch.arange(n, device=device)
        edits = []
        for (kind_name, layer), cells in picks.items():
            kind = KINDS[kind_name]
            mask = torch.zeros(len(sets) * n, seq, kind.n_units(config_of(self.model)), dtype=torch.bool,
                               device=device)
            for s, unit, position in cells:
                token = self.at[position].to(device) - start
                keep = token >= 0
                mask[s * n + rows[keep], token[keep], unit] = True
            values = self.replacements[kind.hook_name(layer)][:, start:]
            edits.append(CellReplace(self.site(kind_name, layer), mask, values))
        return edits


def ablator_at(positions: Positions | None, model, task, **options) -> Ablator:
    """An :class:`Ablator` (``positions`` None: units at every position) or a
    :class:`CellAblator` of the cells at ``positions``; ``options`` as the Ablator's."""
    if positions is None:
        return Ablator(model, task, **options)
    return CellAblator(positions, model, task, **options)
