"""The computational graph of a transformer at the granularity edge methods score.

Nodes are the input embeddings, every attention head, every MLP and the logits. A *source* is a
node whose output is written into the residual stream (input, heads, MLPs); a *destination* is a
node input read from it: each head's query, key and value inputs separately, each MLP's input and
the logits (the final residual stream). There is an edge from every source to every destination
downstream of it, i.e. from every source written before the destination reads the stream:

- head ``l.h`` (q, k and v) reads the input, every head and MLP of layers ``< l``;
- MLP ``l`` reads the input, every head of layers ``<= l`` and the MLPs of layers ``< l``;
- the logits read every source.

In **parallel blocks** (GPT-NeoX, GPT-J: ``parallel=True``) attention and MLP both read the
stream entering the block, so MLP ``l`` reads no head of layer ``l``.

This is the convention of EAP-IG / the MIB circuit track; GPT-2 small has 32,491 edges in it.

**Grouped-query attention** (``n_kv_heads`` < ``n_heads``, e.g. Llama-style models): query head
``h`` reads the keys and values of key/value head ``h // G``, ``G = n_heads / n_kv_heads`` (the
group size). A key or value projection input is computed once per key/value head and shared by
its group, so there is a query destination per *query* head (``l.h (q)``) and a key and a value
destination per *key/value* head, named ``l.kv{g}`` (``l.kv0 (k)``, ``l.kv0 (v)``). A layer then
has ``n_heads + 2 n_kv_heads`` attention destinations plus its MLP input. Patching an edge into
``l.kv{g} (k)`` changes the keys every head of group ``g`` reads. With ``n_kv_heads == n_heads``
the graph is exactly the multi-head one above (kv head ``h`` is named ``l.h``).

Indexing is stable and depends only on ``(n_layers, n_heads, n_kv_heads)``:

- sources in forward order: ``input``, ``0.0 .. 0.{H-1}``, ``mlp 0``, ``1.0``, ..., ``mlp {L-1}``;
  the sources a destination reads are always a prefix of this list;
- destinations in forward order: for each layer, per key/value head ``g``: the queries of its
  group's heads ``gG .. gG+G-1``, then ``g``'s key and value; then ``mlp l``; finally ``logits``.
  For multi-head attention (``G`` = 1) that is ``l.0`` q, k, v, ``l.1`` q, k, v, ..., ``mlp l``.
  A destination's offset within its layer is its *slot* (``attn_slot``); slots
  ``0 .. n_attn_dests - 1`` are the attention inputs, slot ``n_attn_dests`` the MLP input;
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
    n_kv_heads: int | None = None  # None: as many as query heads (multi-head attention)
    parallel: bool = False  # parallel blocks: MLP l reads no head of layer l

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ValueError(f"A graph needs at least one layer and one head, got n_layers="
                             f"{self.n_layers}, n_heads={self.n_heads}.")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads, got n_kv_heads={self.n_kv_heads}, "
                             f"n_heads={self.n_heads}.")

    @classmethod
    def of_model(cls, model) -> "Graph":
        """The graph of a model, from its block adapter: only ``n_layers``, ``n_heads``,
        ``n_kv_heads`` (grouped-query attention) and whether blocks are parallel matter."""
        from ..arch import adapter_for

        w = adapter_for(model)
        return cls(w.n_layers, w.n_heads, w.n_kv_heads, parallel=w.parallel)

    def as_dict(self) -> dict[str, int]:
        """``n_layers``, ``n_heads`` and, only where they apply, ``n_kv_heads`` (grouped-query
        attention) and ``parallel``."""
        out = {"n_layers": self.n_layers, "n_heads": self.n_heads}
        if self.n_kv_heads != self.n_heads:
            out["n_kv_heads"] = self.n_kv_heads
        if self.parallel:
            out["parallel"] = True
        return out

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // self.group_size

    def kv_name(self, layer: int, kv_head: int) -> str:
        """Node name of a key/value head's k and v destinations: ``l.h`` (multi-head attention)
        or ``l.kv{g}`` (grouped-query attention)."""
        return f"{layer}.{kv_head}" if self.group_size == 1 else f"{layer}.kv{kv_head}"

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
    def n_attn_dests(self) -> int:
        """Attention inputs per layer: a query per head, a key and a value per key/value head."""
        return self.n_heads + 2 * self.n_kv_heads

    @property
    def dests_per_layer(self) -> int:
        """The attention inputs plus the MLP input."""
        return self.n_attn_dests + 1

    @property
    def n_dests(self) -> int:
        return self.n_layers * self.dests_per_layer + 1

    def attn_slot(self, head: int, which: str) -> int:
        """Offset within its layer of an attention input: ``head`` is the query head for
        ``"q"``, the key/value head for ``"k"`` and ``"v"``."""
        G = self.group_size
        if which not in QKV:
            raise ValueError(f"which must be one of {QKV}, got {which!r}.")
        limit = self.n_heads if which == "q" else self.n_heads // G
        if not 0 <= head < limit:
            kind = "query head" if which == "q" else "key/value head"
            raise ValueError(f"{which!r} input: {kind} {head} is outside 0..{limit - 1}.")
        if which == "q":
            return (head // G) * (G + 2) + head % G
        return head * (G + 2) + G + QKV.index(which) - 1

    def qkv_dest(self, layer: int, head: int, which: str) -> int:
        """Destination index; ``head`` as in :meth:`attn_slot`."""
        return layer * self.dests_per_layer + self.attn_slot(head, which)

    def mlp_dest(self, layer: int) -> int:
        return layer * self.dests_per_layer + self.n_attn_dests

    def dest_heads(self, dest: int) -> list[int]:
        """Source indices of the nodes that read destination ``dest``: the head of a query, the
        heads of the group of a key or value, the MLP, or ``n_sources`` for the logits."""
        if dest == self.logits_dest:
            return [self.n_sources]
        layer, slot = divmod(dest, self.dests_per_layer)
        if slot == self.n_attn_dests:
            return [self.mlp_source(layer)]
        G = self.group_size
        group, offset = divmod(slot, G + 2)
        heads = [group * G + offset] if offset < G else range(group * G, (group + 1) * G)
        return [self.head_source(layer, h) for h in heads]

    @property
    def logits_dest(self) -> int:
        return self.n_layers * self.dests_per_layer

    @cached_property
    def dest_names(self) -> list[tuple[str, str | None]]:
        """``(node, input)`` per destination: ``("8.6", "q")``, ``("8.kv1", "k")`` (grouped-query
        attention), ``("mlp 2", None)``, ``("logits", None)``."""
        names: list[tuple[str, str | None]] = []
        G = self.group_size
        for layer in range(self.n_layers):
            for g in range(self.n_kv_heads):
                names += [(f"{layer}.{h}", "q") for h in range(g * G, (g + 1) * G)]
                names += [(self.kv_name(layer, g), x) for x in "kv"]
            names.append((f"mlp {layer}", None))
        return names + [("logits", None)]

    @cached_property
    def n_upstream(self) -> torch.Tensor:
        """``[n_dests]`` number of sources each destination reads (a prefix of the sources)."""
        per_dest = []
        for layer in range(self.n_layers):
            before = 1 + layer * (self.n_heads + 1)
            mlp_reads = before if self.parallel else before + self.n_heads
            per_dest += [before] * self.n_attn_dests + [mlp_reads]
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
            raise ValueError(f"No edge {label!r} in the graph {self.as_dict()} (edges only go "
                             "downstream; grouped-query keys and values are named l.kv{g})."
                             ) from None

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
