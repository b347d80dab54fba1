"""The computational graph of a transformer at the granularity edge methods score.

Nodes are the input embeddings, every attention head, every MLP and the logits. A *source* is a
node whose output is written into the residual stream (input, heads, MLPs); a *destination* is a
node input read from it: each head's query, key and value inputs separately, each MLP's input and
the logits (the final residual stream). There is an edge from every source to every destination
downstream of it, i.e. from every source written before the destination reads the stream:

- head ``l.h`` (q, k and v) reads the input, every head and MLP of layers ``< l``;
- MLP ``l`` reads the input, every head of layers ``<= l`` and the MLPs of layers ``< l``;
- the logits read every source.

This is the convention of EAP-IG / the MIB circuit track; GPT-2 small has 32,491 edges in it.

Indexing is stable and depends only on ``(n_layers, n_heads)``:

- sources in forward order: ``input``, ``0.0 .. 0.{H-1}``, ``mlp 0``, ``1.0``, ..., ``mlp {L-1}``;
  the sources a destination reads are always a prefix of this list;
- destinations in forward order: for each layer, ``l.0`` q, k, v, ``l.1`` q, k, v, ..., then
  ``mlp l``; finally ``logits``;
- edges ordered by destination, then by source: edge ``e`` is ``(dest_index[e], source_index[e])``.

Edge labels read ``5.5 -> 8.6 (q)``, ``input -> 0.3 (k)``, ``0.1 -> mlp 0``, ``mlp 2 -> logits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    n_layers: int
    n_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"A graph needs at least one layer and one head, got n_layers="
                             f"{self.n_layers}, n_heads={self.n_heads}.")

    @classmethod
    def of_model(cls, model_or_cfg) -> "Graph":
        """The graph of a model (or of its ``cfg``): only ``n_layers`` and ``n_heads`` matter."""
        cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
        return cls(int(cfg.n_layers), int(cfg.n_heads))

    def as_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads}

    # -- sources ----------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    @cached_property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"{layer}.{head}" for head in range(self.n_heads)] + [f"mlp {layer}"]
        return names

    # -- destinations -----------------------------------------------------------------------
    @property
    def dests_per_layer(self) -> int:
        """3 inputs per head plus the MLP input."""
        return 3 * self.n_heads + 1

    @property
    def n_dests(self) -> int:
        return self.n_layers * self.dests_per_layer + 1

    def qkv_dest(self, layer: int, head: int, which: str) -> int:
        return layer * self.dests_per_layer + 3 * head + QKV.index(which)

    def mlp_dest(self, layer: int) -> int:
        return layer * self.dests_per_layer + 3 * self.n_heads

    @property
    def logits_dest(self) -> int:
        return self.n_layers * self.dests_per_layer

    @cached_property
    def dest_names(self) -> list[tuple[str, str | None]]:
        """``(node, input)`` per destination: ``("8.6", "q")``, ``("mlp 2", None)``,
        ``("logits", None)``."""
        names: list[tuple[str, str | None]] = []
        for layer in range(self.n_layers):
            names += [(f"{layer}.{head}", x) for head in range(self.n_heads) for x in QKV]
            names.append((f"mlp {layer}", None))
        return names + [("logits", None)]

    @cached_property
    def n_upstream(self) -> torch.Tensor:
        """``[n_dests]`` number of sources each destination reads (a prefix of the sources)."""
        per_dest = []
        for layer in range(self.n_layers):
            before = 1 + layer * (self.n_heads + 1)
            per_dest += [before] * (3 * self.n_heads) + [before + self.n_heads]
        return torch.tensor(per_dest + [self.n_sources])

    # -- edges ------------------------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return int(self.n_upstream.sum())

    @cached_property
    def dest_index(self) -> torch.Tensor:
        """``[n_edges]`` destination of each edge."""
        return torch.repeat_interleave(torch.arange(self.n_dests), self.n_upstream)

    @cached_property
    def source_index(self) -> torch.Tensor:
        """``[n_edges]`` source of each edge."""
        offsets = torch.cumsum(self.n_upstream, 0) - self.n_upstream
        return torch.arange(self.n_edges) - offsets[self.dest_index]

    def edge(self, source: str, dest: str, which: str | None = None) -> int:
        """Index of the edge ``source -> dest (which)``, e.g. ``edge("5.5", "8.6", "q")``."""
        label = edge_label(source, dest, which)
        try:
            return self.edge_index[label]
        except KeyError:
            raise ValueError(f"No edge {label!r} in a graph of {self.n_layers} layers and "
                             f"{self.n_heads} heads (edges only go downstream).") from None

    @cached_property
    def edge_index(self) -> dict[str, int]:
        return {label: e for e, label in enumerate(self.labels)}

    @cached_property
    def labels(self) -> list[str]:
        """``[n_edges]`` labels in edge order."""
        out = []
        for dest, (name, which) in enumerate(self.dest_names):
            out += [edge_label(self.source_names[s], name, which)
                    for s in range(int(self.n_upstream[dest]))]
        return out

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """Edge values from a dense ``[..., n_dests, n_sources]`` -> ``[..., n_edges]``."""
        return dense[..., self.dest_index, self.source_index]


def edge_label(source: str, dest: str, which: str | None = None) -> str:
    return f"{source} -> {dest}" + (f" ({which})" if which else "")


def colon_label(label: str) -> str:
    """An edge label in the seed notebook's form: ``5.5 -> 8.6 (q)`` -> ``5:5 -> 8:6 (q)``
    (MLPs, input and logits unchanged)."""
    return " -> ".join(part.replace(".", ":", 1) if part[:1].isdigit() else part
                       for part in label.split(" -> "))
