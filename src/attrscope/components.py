"""Component kinds: which activation a score is about, where it is hooked, how it is named.

Every kind hooks one TransformerLens activation whose axis 2 indexes the kind's units, so the
same code patches, differentiates and reduces heads and neurons:

- ``heads``: ``blocks.{layer}.attn.hook_z``, shape ``[batch, pos, n_heads, d_head]``. Patching a
  head's ``z`` is patching its output, because the head's output is ``z @ W_O[head]``, a linear
  map; gradient x difference and integrated gradients are unchanged by that map too.
- ``neurons``: ``blocks.{layer}.mlp.hook_post`` (post-activation), shape ``[batch, pos, d_mlp]``.

Users see heads as ``L.H`` and neurons as ``L.N`` (layer, then index), as in the IOI literature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

UNIT_AXIS = 2


@dataclass(frozen=True)
class ComponentKind:
    name: str
    hook_template: str
    unit: str
    config_size_field: str

    def hook_name(self, layer: int) -> str:
        return self.hook_template.format(layer=layer)

    def n_units(self, cfg) -> int:
        return int(getattr(cfg, self.config_size_field))

    @staticmethod
    def label(layer: int, unit: int) -> str:
        return f"{layer}.{unit}"


HEADS = ComponentKind("heads", "blocks.{layer}.attn.hook_z", "head", "n_heads")
NEURONS = ComponentKind("neurons", "blocks.{layer}.mlp.hook_post", "neuron", "d_mlp")
KINDS: dict[str, ComponentKind] = {kind.name: kind for kind in (HEADS, NEURONS)}


def resolve_kinds(components: str | Iterable[str]) -> list[ComponentKind]:
    """Turn ``"heads,neurons"`` or ``("heads",)`` into kinds, refusing unknown names."""
    if isinstance(components, str):
        components = [c for c in components.split(",") if c.strip()]
    names = [c.strip() for c in components]
    if not names:
        raise ValueError(f"No components given; choose from {sorted(KINDS)}.")
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise ValueError(f"Unknown component kind(s) {unknown}; choose from {sorted(KINDS)}.")
    return [KINDS[n] for n in dict.fromkeys(names)]


def sum_per_unit(x: torch.Tensor) -> torch.Tensor:
    """Sum over positions and features, keeping units.

    x: ``[batch, pos, units, *features]`` -> ``[batch, units]``.
    """
    return x.sum(dim=1).flatten(start_dim=2).sum(dim=-1) if x.dim() > 3 else x.sum(dim=1)

