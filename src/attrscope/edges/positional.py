"""Circuits of (edge, position) pairs, from position-resolved edge scores ``[n, n_edges, n_pos]``.

A *pair* ``(e, j)`` is edge ``e`` at entry ``j`` of the scores' position axis: its source's output
at that position into its destination's input at that position (each prompt at its own token for
named positions). Pairs are numbered ``e * n_pos + j``, the order of ``Scores.labels("edges")``
(``5.5 -> 8.6 (q) @S2``).

**Selection** (:meth:`PositionCircuit.from_scores`), by |mean score over samples| (ties by pair
number):

- ``top n``: the ``n`` pairs of largest |mean|; ``threshold t``: every pair with |mean| >= t.
  Neither is pruned: an edge at an early position matters through attention at later positions,
  which a rule inside one position cannot see.
- ``top n connected`` (``positions="each"`` only, where entry ``j`` is token ``j`` of every
  prompt): ``n`` pairs that connect an input to a logits node. Within a position, edges connect
  as in :mod:`attrscope.edges.circuit`; across positions through attention: head ``h``'s key or
  value input at ``p`` is read by ``h``'s queries at every position ``>= p``, so a kept edge into
  it reaches ``h`` at every position ``>= p``, and is useful when ``h`` is useful at one of them.
  Pairs are taken in |mean| order until ``n`` of them are connected (:func:`prune_pairs`), then
  the weakest pair whose removal disconnects nothing else is dropped, repeatedly, down to ``n``;
  where no such pair is left the circuit is larger and its ``note`` says so. Named positions
  order differently in each prompt, so there this rule is refused.

**Evaluation**: :class:`~attrscope.edges.circuit.CircuitEvaluator` built with the scores'
positions setting ablates every (edge, absolute position) outside the circuit and keeps the
pairs inside, in one edge-ablation forward (its mask has a position axis). With named positions,
the positions no name covers are outside every circuit. A circuit holding every position of
some edges is the all-positions circuit of those edges (tested).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float

from ..analysis.verify import FRACTIONS, curve_from_metrics
from ..scores import EDGES, Scores
from .circuit import dest_nodes, ranked_edges
from .graph import Graph


def is_key_or_value(graph: Graph) -> list[bool]:
    """Per destination: whether it is a key or value input (read at later positions too)."""
    return [which in ("k", "v") for _, which in graph.dest_names]


def prune_pairs(graph: Graph, n_pos: int, pairs) -> list[int]:
    """The pairs of ``pairs`` (numbers ``e * n_pos + p``, ``p`` a token position) whose source
    at ``p`` is reached from an input and whose destination is read by a node that reaches a
    logits node through pairs of ``pairs`` (module docstring), sorted."""
    pairs = sorted({int(x) for x in pairs})
    bad = [x for x in pairs if not 0 <= x < graph.n_edges * n_pos]
    if bad:
        raise ValueError(f"(edge, position) pairs {bad[:5]} are outside 0..{graph.n_edges * n_pos - 1}.")
    node_of, kv = dest_nodes(graph), is_key_or_value(graph)
    edge = [divmod(x, n_pos) for x in pairs]
    src = [int(graph.source_index[e]) for e, _ in edge]
    dest = [int(graph.dest_index[e]) for e, _ in edge]

    def later(i: int) -> range:  # the positions of the reading nodes that pair i reaches
        p = edge[i][1]
        return range(p, n_pos) if kv[dest[i]] else range(p, p + 1)

    reached = {(0, p) for p in range(n_pos)}
    for i in range(len(pairs)):  # edge order is forward order: a node's in-pairs come first
        if (src[i], edge[i][1]) in reached:
            reached.update((v, q) for v in node_of[dest[i]] for q in later(i))
    useful = {(graph.n_sources, p) for p in range(n_pos)}
    for i in sorted(range(len(pairs)), key=lambda i: -src[i]):  # out-pairs before in-pairs
        if any((v, q) in useful for v in node_of[dest[i]] for q in later(i)):
            useful.add((src[i], edge[i][1]))
    return [x for i, x in enumerate(pairs) if (src[i], edge[i][1]) in reached
            and any((v, q) in useful for v in node_of[dest[i]] for q in later(i))]


def connected_pairs(graph: Graph, mean: Float[torch.Tensor, "n_edges n_pos"], n: int
                    ) -> tuple[list[int], list[int]]:
    """(circuit, pairs considered), both sorted: pairs in |``mean``| order until ``n`` are
    connected (:func:`prune_pairs`; adding pairs never disconnects one, so a bisection finds
    the prefix), then the weakest pair whose removal leaves every other connected dropped until
    ``n`` are left or none can go."""
    n_pos = mean.shape[1]
    if not 0 <= n <= mean.numel():
        raise ValueError(f"top n must be between 0 and the {mean.numel()} (edge, position) "
                         f"pairs, got {n}.")
    ranked = ranked_edges(mean.flatten())
    low, high = n, len(ranked)
    while low < high:
        mid = (low + high) // 2
        if len(prune_pairs(graph, n_pos, ranked[:mid])) >= n:
            high = mid
        else:
            low = mid + 1
    kept = prune_pairs(graph, n_pos, ranked[:low])
    strength = mean.flatten().abs().nan_to_num(0.0)
    while len(kept) > n:
        for x in sorted(kept, key=lambda x: (float(strength[x]), -x)):
            rest = [y for y in kept if y != x]
            if prune_pairs(graph, n_pos, rest) == rest:
                kept = rest
                break
        else:
            break
    return kept, sorted(ranked[:low])


@dataclass
class PositionCircuit:
    """A set of (edge, position) pairs of ``graph`` at the positions ``positions`` (the scores'
    position labels; ``setting`` resolves them on a task): ``pairs`` kept (sorted pair numbers
    ``e * n_pos + j``) out of ``selected``.

    scores: ``[n_edges, n_pos]`` mean score per pair over samples (None if not from scores);
    rule: how it was selected; note: when the rule did not give what was asked, what happened.
    """

    graph: Graph
    positions: list
    setting: str | list[str]
    pairs: list[int]
    selected: list[int]
    rule: str
    scores: torch.Tensor | None = None
    faithfulness: dict | None = field(default=None)
    note: str = ""

    @property
    def n_pos(self) -> int:
        return len(self.positions)

    @classmethod
    def from_scores(cls, scores: Scores, top: int | None = None, threshold: float | None = None,
                    connected: bool = False) -> "PositionCircuit":
        """Select from position-resolved edge scores by ``top`` (``connected``: the connected
        rule, ``positions="each"`` only) or ``threshold`` (exactly one; module docstring)."""
        if (top is None) == (threshold is None):
            raise ValueError("Give exactly one of top and threshold.")
        if EDGES not in scores or scores.position_labels is None:
            raise ValueError("A circuit of (edge, position) pairs needs position-resolved edge "
                             "scores (an edge method run with positions='each' or named "
                             "positions).")
        mean = scores.mean(EDGES)  # [n_edges, n_pos]
        setting = scores.meta["positions"]["setting"]

        def make(pairs: list[int], selected: list[int], rule: str) -> "PositionCircuit":
            return cls(scores.graph, scores.position_labels, setting, pairs, selected, rule, mean)
        if threshold is not None:
            if not threshold >= 0:
                raise ValueError(f"threshold must be >= 0, got {threshold}.")
            chosen = torch.nonzero(mean.flatten().abs() >= threshold).flatten().tolist()
            return make(chosen, chosen, f"|score| >= {threshold:g}, by position")
        if top < 0:
            raise ValueError(f"top n must be at least 0, got {top}.")
        if not connected:
            chosen = sorted(ranked_edges(mean.flatten())[:top])
            return make(chosen, chosen, f"top {top} by position")
        if setting != "each":
            raise ValueError(f"A connected circuit by position needs positions='each' (token j "
                             f"of every prompt); named positions ({setting}) order differently "
                             "in each prompt. Select by top or threshold instead.")
        pairs, considered = connected_pairs(scores.graph, mean, top)
        circuit = make(pairs, considered, f"top {top} connected, by position")
        if len(pairs) != top:
            circuit.note = (f"No connected set of exactly {top} (edge, position) pairs was "
                            f"found by dropping the weakest; this one has {len(pairs)}.")
        return circuit

    def keep(self) -> Bool[torch.Tensor, "n_edges n_pos"]:
        """Which (edge, position) pairs are in the circuit, as
        :meth:`~attrscope.edges.circuit.CircuitEvaluator.metrics` takes them."""
        keep = torch.zeros(self.graph.n_edges * self.n_pos, dtype=torch.bool)
        keep[self.pairs] = True
        return keep.view(self.graph.n_edges, self.n_pos)

    def label(self, pair: int) -> str:
        e, j = divmod(pair, self.n_pos)
        return f"{self.graph.labels[e]} @{self.positions[j]}"

    def edges(self) -> list[int]:
        """The edges kept at one position at least (sorted)."""
        return sorted({pair // self.n_pos for pair in self.pairs})

    def _row(self, pair: int) -> dict:
        g = self.graph
        e, j = divmod(pair, self.n_pos)
        name, which = g.dest_names[int(g.dest_index[e])]
        return {"label": self.label(pair), "edge": g.labels[e],
                "source": g.source_names[int(g.source_index[e])], "dest": name, "input": which,
                "position": self.positions[j],
                "score": None if self.scores is None else float(self.scores.flatten()[pair])}

    def as_dict(self) -> dict:
        return {"graph": self.graph.as_dict(), "positions": {"setting": self.setting,
                                                             "labels": self.positions},
                "rule": self.rule, "n_selected": len(self.selected), "n_pairs": len(self.pairs),
                "pairs": [self._row(x) for x in self.pairs],
                "selected": [self._row(x) for x in self.selected],
                "faithfulness": self.faithfulness, "note": self.note,
                "score": "mean over samples of metric(run with the edge patched at the "
                         "position) - metric(run)"}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "PositionCircuit":
        """The circuit of :meth:`as_dict` (only the selected pairs' scores are saved; the
        others read NaN)."""
        graph = Graph(**data["graph"])
        labels = data["positions"]["labels"]
        index = {str(p): j for j, p in enumerate(labels)}

        def number(row: dict) -> int:
            return graph.edge_index[row["edge"]] * len(labels) + index[str(row["position"])]

        scores = None
        if data["selected"] and data["selected"][0]["score"] is not None:
            scores = torch.full((graph.n_edges * len(labels),), float("nan"))
            for row in data["selected"]:
                scores[number(row)] = row["score"]
            scores = scores.view(graph.n_edges, len(labels))
        return cls(graph, labels, data["positions"]["setting"],
                   sorted(number(r) for r in data["pairs"]),
                   sorted(number(r) for r in data["selected"]), data["rule"], scores,
                   data.get("faithfulness"), data.get("note", ""))

    @classmethod
    def load_json(cls, path: str | Path) -> "PositionCircuit":
        return cls.from_dict(json.loads(Path(path).read_text()))


def position_curve(evaluator, mean: Float[torch.Tensor, "n_edges n_pos"],
                   fractions=FRACTIONS) -> dict:
    """Faithfulness of the top x % of (edge, position) pairs by |``mean``| (not pruned) with
    ``evaluator`` (a :class:`~attrscope.edges.circuit.CircuitEvaluator` at the scores'
    positions): fractions, selected and sizes (pairs) per fraction, f, cpr, cmd, m_model,
    m_empty and their bootstrap intervals over prompts, as for whole edges."""
    total = mean.numel()
    selected = [min(total, max(1, round(f * total))) for f in fractions]
    ranked = ranked_edges(mean.flatten())
    keeps = []
    for k in selected:
        keep = torch.zeros(total, dtype=torch.bool)
        keep[ranked[:k]] = True
        keeps.append(keep.view(mean.shape))
    metrics = evaluator.metrics([range(mean.shape[0]), []] + keeps)
    return {"ablation": evaluator.how, "selected": selected, "sizes": selected,
            **curve_from_metrics(metrics, fractions)}
