"""Circuits from edge scores: selection without dangling nodes, and faithfulness by ablation.

**Selection.** Edges are ranked by |mean score over samples| (largest first, ties by edge
order). ``top n`` selects the first ``n``; ``threshold t`` selects every edge with
|mean score| >= t. The selection is then *pruned*: a node is

- *reached* if it is the input, or some kept edge into it (any of a head's q/k/v inputs counts)
  comes from a reached node;
- *useful* if it is the logits, or some kept edge out of it goes to a useful node;

and an edge is kept iff its source is reached and its destination node is useful. Under
grouped-query attention a key or value input is read by every head of its group
(:meth:`Graph.dest_heads`): an edge into it reaches all of them, and it is useful if one of them
is. The graph is a
DAG in source order, so both sets take one pass each, and the result is the fixed point of
repeatedly dropping every edge whose source has no kept in-edge (input excepted) or whose
destination has no kept out-edge (logits excepted): removing such edges never un-reaches or
un-uses a node of a kept edge. The circuit can therefore be smaller than ``n``; it is always a
subset of the selection.

**Faithfulness.** A circuit is evaluated exactly: the ``run`` prompt is run with every edge
*outside* the circuit ablated: its source's contribution to its destination input is replaced
(see :class:`~attrscope.edges.forward.EdgeAblation`; the source's output as computed in this
forward is removed and the replacement added), and every edge inside kept. Replacements
(``how``), per source node output (a head's ``z @ W_O``, an MLP's output, the embeddings):

- ``zero``: 0;
- ``mean``: the mean output over the reference prompts (the task's clean and corrupted prompts)
  per position, padding excluded (:func:`attrscope.analysis.ablation.per_position_mean`);
- ``other``: the other prompt's output (running clean: the corrupted prompt's, i.e. the
  corrupted contribution is patched into every edge outside the circuit).

With m the mean task metric over samples (e.g. logit(answer) - logit(distractor)), MIB
faithfulness is
f = (m(circuit) - m(empty)) / (m(model) - m(empty)): m(model) keeps every edge, m(empty) ablates
every edge. :meth:`CircuitEvaluator.curve` evaluates the top 0.1 .. 100 % of edges (pruned) and
reports CPR (area under f) and CMD (area under |1 - f|) over the fraction of edges, as
:func:`attrscope.analysis.verify.faithfulness_curve` does for nodes. Built with a positions
setting, the evaluator also takes circuits of (edge, position) pairs (bool ``[n_edges, n_pos]``,
:mod:`attrscope.edges.positional`) and ablates each edge at the positions outside them only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Bool, Float

from ..analysis.ablation import ABLATIONS, per_position_mean
from ..analysis.verify import FRACTIONS, curve_from_metrics
from ..engine import chunks
from ..scores import EDGES, Scores
from ..sites import Positions, resolve_positions
from .forward import EdgeAblation
from .graph import Graph, colon_label
from .methods import EdgeRun


# -- selection ---------------------------------------------------------------------------------
def refuse_positions(scores: Scores, what: str) -> None:
    """Refuse position-resolved edge scores where only edges over all positions are defined."""
    if scores.position_labels is not None:
        raise ValueError(f"{what} needs edge scores over all positions; these are by position "
                         f"({scores.meta['positions']['setting']}): select (edge, position) "
                         "pairs with attrscope.edges.positional.PositionCircuit.from_scores, or "
                         "run with positions='all'.")


def dest_nodes(graph: Graph) -> list[list[int]]:
    """The nodes reading each destination, as source indices (logits: ``n_sources``): one node,
    except for a grouped-query key or value input (every head of its group)."""
    return [graph.dest_heads(dest) for dest in range(graph.n_dests)]


def prune(graph: Graph, edges: Sequence[int]) -> list[int]:
    """The edges of ``edges`` whose source is reached from the input and whose destination node
    reaches the logits through edges of ``edges`` (sorted; see the module docstring)."""
    edges = sorted({int(e) for e in edges})
    bad = [e for e in edges if not 0 <= e < graph.n_edges]
    if bad:
        raise ValueError(f"Edge indices {bad} are outside 0..{graph.n_edges - 1}.")
    node_of = dest_nodes(graph)
    src = [int(graph.source_index[e]) for e in edges]
    dst = [node_of[int(graph.dest_index[e])] for e in edges]
    reached = {0}
    for i in range(len(edges)):  # edges are in destination (forward) order: in- before out-edges
        if src[i] in reached:
            reached.update(dst[i])
    useful = {graph.n_sources}
    for i in sorted(range(len(edges)), key=lambda i: -src[i]):  # every out-edge before in-edges
        if useful.intersection(dst[i]):
            useful.add(src[i])
    return [e for e, s, v in zip(edges, src, dst) if s in reached and useful.intersection(v)]


def ranked_edges(mean: torch.Tensor) -> list[int]:
    """Edge indices by |mean score| ``[n_edges]``, largest first (ties by edge order)."""
    return torch.argsort(mean.abs(), descending=True, stable=True).tolist()


def shortest_connected_prefix(graph: Graph, ranked: Sequence[int], n: int) -> int:
    """The smallest k such that ``prune(graph, ranked[:k])`` has at least ``n`` edges (``n`` at
    most ``graph.n_edges``). Adding edges never un-reaches or un-uses a node, so the pruned size
    grows with k and a bisection finds it."""
    if n <= 0:
        return 0
    low, high = n, len(ranked)  # fewer than n edges cannot keep n
    while low < high:
        mid = (low + high) // 2
        if len(prune(graph, ranked[:mid])) >= n:
            high = mid
        else:
            low = mid + 1
    return low


def trim_connected(graph: Graph, edges: Sequence[int], n: int, mean: torch.Tensor) -> list[int]:
    """Drop edges of the connected set ``edges`` (``prune(graph, edges) == edges``), smallest
    |``mean``| first, down to ``n``, each one only if every other edge stays connected: its
    source keeps another out-edge (or is the input) and every node reading its destination that
    has out-edges keeps another in-edge. Stops above ``n`` when no such edge is left."""
    node_of = dest_nodes(graph)
    src = {e: int(graph.source_index[e]) for e in edges}
    dst = {e: node_of[int(graph.dest_index[e])] for e in edges}
    out_deg: dict[int, int] = {}
    in_deg: dict[int, int] = {}
    for e in edges:
        out_deg[src[e]] = out_deg.get(src[e], 0) + 1
        for v in dst[e]:
            in_deg[v] = in_deg.get(v, 0) + 1
    kept = set(edges)
    weakest = sorted(edges, key=lambda e: (abs(float(mean[e])), -e))
    while len(kept) > n:
        for e in weakest:
            if e in kept and (src[e] == 0 or out_deg[src[e]] >= 2) and all(
                    in_deg[v] >= 2 or not out_deg.get(v) for v in dst[e]):
                kept.discard(e)
                out_deg[src[e]] -= 1
                for v in dst[e]:
                    in_deg[v] -= 1
                break
        else:
            break
    return sorted(kept)


def grow_connected(graph: Graph, mean: torch.Tensor, n: int) -> list[int]:
    """A connected circuit of ``n`` edges grown greedily from the input and the logits: each step
    adds the edge of largest |``mean``| between two nodes already in it, or a new node with its
    strongest in-edge from the circuit and out-edge to it when the weaker of those two is
    stronger (and two edges are still wanted). Every node of the circuit stays reached from the
    input and reaching the logits, so nothing is pruned. Sorted; fewer than ``n`` only when the
    graph has no further edge to add."""
    node_of = dest_nodes(graph)
    logits = graph.n_sources
    src = graph.source_index.long()
    pair_edge = torch.tensor([e for e in range(graph.n_edges)
                              for _ in node_of[int(graph.dest_index[e])]], dtype=torch.long)
    pair_node = torch.tensor([v for e in range(graph.n_edges)
                              for v in node_of[int(graph.dest_index[e])]], dtype=torch.long)
    score = mean.detach().double().abs().nan_to_num(0.0).cpu()
    inside = torch.zeros(logits + 1, dtype=torch.bool)
    inside[0] = inside[logits] = True
    chosen = torch.zeros(graph.n_edges, dtype=torch.bool)
    none = torch.tensor(-1.0, dtype=torch.float64)
    while int(chosen.sum()) < n:
        into = torch.zeros(graph.n_edges, dtype=torch.bool)  # some reader already inside
        into[pair_edge[inside[pair_node]]] = True
        single = inside[src] & into & ~chosen
        if n - int(chosen.sum()) >= 2 and not inside[1:logits].any():
            single[:] = False  # input -> logits alone would leave no room for a second edge
        best_single = int(torch.argmax(torch.where(single, score, none)))
        single_value = float(score[best_single]) if single[best_single] else -1.0
        pair_value, pair = -1.0, None
        if n - int(chosen.sum()) >= 2:
            entering = inside[src[pair_edge]] & ~inside[pair_node] & ~chosen[pair_edge]
            in_best = torch.full((logits + 1,), -1.0, dtype=torch.float64).scatter_reduce(
                0, pair_node[entering], score[pair_edge[entering]], "amax")
            leaving = ~inside[src] & into & ~chosen
            out_best = torch.full((logits + 1,), -1.0, dtype=torch.float64).scatter_reduce(
                0, src[leaving], score[leaving], "amax")
            both = torch.minimum(in_best, out_best)
            both[inside] = -1.0
            w = int(torch.argmax(both))
            if float(both[w]) >= 0 and float(both[w]) > single_value:
                first_in = pair_edge[entering & (pair_node == w)]
                e_in = int(first_in[torch.argmax(score[first_in])])
                outs = torch.nonzero(leaving & (src == w)).flatten()
                e_out = int(outs[torch.argmax(score[outs])])
                pair_value, pair = float(both[w]), (w, e_in, e_out)
        if pair is not None:
            w, e_in, e_out = pair
            chosen[[e_in, e_out]] = True
            inside[w] = True
        elif single_value >= 0:
            chosen[best_single] = True
        else:
            break
    return torch.nonzero(chosen).flatten().tolist()


def connected_top(graph: Graph, mean: torch.Tensor, n: int) -> tuple[list[int], list[int], str]:
    """The rule behind ``edges --top n``: add edges in |``mean``| order until ``n`` of them
    connect the input to the logits (:func:`shortest_connected_prefix`), then drop the weakest
    edges whose removal disconnects nothing else down to exactly ``n``
    (:func:`trim_connected`). Where that leaves more than ``n`` (every weaker edge holds
    others), the circuit is grown greedily instead (:func:`grow_connected`). Returns (circuit
    edges, edges considered, both sorted, and which rule gave it: ``"score order"`` or
    ``"greedy"``)."""
    if not 0 <= n <= graph.n_edges:
        raise ValueError(f"top n must be between 0 and the graph's {graph.n_edges} edges, "
                         f"got {n}.")
    ranked = ranked_edges(mean)
    considered = ranked[:shortest_connected_prefix(graph, ranked, n)]
    edges = trim_connected(graph, prune(graph, considered), n, mean)
    if len(edges) == n:
        return edges, sorted(considered), "score order"
    grown = grow_connected(graph, mean, n)
    return grown, grown, "greedy"


@dataclass
class Circuit:
    """A set of edges of ``graph``: ``edges`` (kept after pruning, sorted) out of ``selected``.

    scores: ``[n_edges]`` mean score per edge over samples (None if not from scores); rule:
    how it was selected (``"top 200"``, ``"|score| >= 0.1"``); note: when the rule did not
    give what was asked (no connected edge, fewer or more edges), what happened and what to
    change, in words ("" otherwise).
    """

    graph: Graph
    edges: list[int]
    selected: list[int]
    rule: str
    scores: torch.Tensor | None = None
    faithfulness: dict | None = field(default=None)
    note: str = ""

    @classmethod
    def top(cls, graph: Graph, mean: torch.Tensor, n: int) -> "Circuit":
        """The ``n`` edges of largest |mean|, pruned: often few or none of them stay (on a
        deep model the top edges rarely join the input to the logits); see :meth:`connected`."""
        if n < 0:
            raise ValueError(f"top n must be at least 0, got {n}.")
        chosen = ranked_edges(mean)[:n]
        circuit = cls(graph, prune(graph, chosen), sorted(chosen), f"top {n}", mean)
        circuit.note = _empty_note(graph, mean, circuit, "raise the number of edges")
        return circuit

    @classmethod
    def connected(cls, graph: Graph, mean: torch.Tensor, n: int) -> "Circuit":
        """``n`` edges that connect the input to the logits, by :func:`connected_top`."""
        edges, considered, how = connected_top(graph, mean, n)
        circuit = cls(graph, edges, considered, f"top {n} connected, {how}", mean)
        if len(edges) != n:
            circuit.note = (f"The greedy growth found no connected circuit of exactly {n} "
                            f"edges; this one has {len(edges)}. Ask for --top {len(edges)}.")
        return circuit

    @classmethod
    def threshold(cls, graph: Graph, mean: torch.Tensor, t: float) -> "Circuit":
        if not t >= 0:
            raise ValueError(f"threshold must be >= 0, got {t}.")
        chosen = torch.nonzero(mean.abs() >= t).flatten().tolist()
        circuit = cls(graph, prune(graph, chosen), chosen, f"|score| >= {t:g}", mean)
        circuit.note = _empty_note(graph, mean, circuit, "lower --threshold")
        return circuit

    @classmethod
    def from_scores(cls, scores: Scores, top: int | None = None,
                    threshold: float | None = None) -> "Circuit":
        """Select from an edge result by ``top`` (:meth:`connected`: ``top`` connected edges)
        or ``threshold`` (exactly one)."""
        if (top is None) == (threshold is None):
            raise ValueError("Give exactly one of top and threshold.")
        if EDGES not in scores:
            raise ValueError(f"These scores have no {EDGES!r} kind (kinds: {scores.kinds}).")
        refuse_positions(scores, "selecting a circuit")
        mean = scores.mean(EDGES)
        if top is not None:
            return cls.connected(scores.graph, mean, top)
        return cls.threshold(scores.graph, mean, threshold)

    # -- nodes and serialisation ---------------------------------------------------------------
    def nodes(self) -> list[str]:
        """Names of the nodes of the kept edges, in forward order (``input``, ``0.1``, ``mlp 0``,
        ..., ``logits``)."""
        node_of = dest_nodes(self.graph)
        ids = {int(self.graph.source_index[e]) for e in self.edges}
        for e in self.edges:  # a grouped key/value input: the heads of its group in the circuit
            readers = node_of[int(self.graph.dest_index[e])]
            ids |= ({v for v in readers if v in ids} or set(readers)) if len(readers) > 1 \
                else set(readers)
        names = self.graph.source_names + ["logits"]
        return [names[i] for i in sorted(ids)]

    def as_dict(self) -> dict:
        g = self.graph
        rows = []
        for e in self.edges:
            name, which = g.dest_names[int(g.dest_index[e])]
            label = g.labels[e]
            rows.append({"edge": colon_label(label), "label": label,
                         "source": g.source_names[int(g.source_index[e])], "dest": name,
                         "input": which,
                         "score": None if self.scores is None else float(self.scores[e])})
        return {"graph": g.as_dict(), "rule": self.rule, "n_selected": len(self.selected),
                "n_edges": len(self.edges), "nodes": self.nodes(), "edges": rows,
                "selected": [{"label": g.labels[e],
                              "score": None if self.scores is None else float(self.scores[e])}
                             for e in self.selected],
                "faithfulness": self.faithfulness, "note": self.note,
                "score": "mean over samples of metric(run with the edge patched) - metric(run)"}

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "Circuit":
        graph = Graph(**data["graph"])
        edges = sorted(graph.edge(r["source"], r["dest"], r["input"]) for r in data["edges"])
        selected = sorted(graph.edge_index[r["label"]] for r in data["selected"])
        scores = None  # only the selected edges' scores are saved; the others read NaN
        if data["selected"] and data["selected"][0]["score"] is not None:
            scores = torch.full((graph.n_edges,), float("nan"))
            for r in data["selected"]:
                scores[graph.edge_index[r["label"]]] = r["score"]
        return cls(graph, edges, selected, data["rule"], scores, data.get("faithfulness"),
                   data.get("note", ""))

    @classmethod
    def load_json(cls, path: str | Path) -> "Circuit":
        return cls.from_dict(json.loads(Path(path).read_text()))


RULE_WORDS = {
    "score order": "edges in |score| order until {n} connect the input to the logits, then the "
                   "weakest edges whose removal disconnects nothing else dropped down to {n}",
    "greedy": "grown greedily from the input and the logits (the edges in |score| order could "
              "not give exactly {n}): each step adds the strongest edge between circuit nodes, "
              "or a new node with its strongest edges in and out, until {n} edges",
}


def rule_words(rule: str) -> str:
    """A circuit's selection ``rule`` in words (how ``top n connected`` was reached)."""
    if not rule.startswith("top ") or " connected, " not in rule:
        return ""
    n, how = rule[len("top "):].split(" connected, ", 1)
    return RULE_WORDS.get(how, "").format(n=n)


def _empty_note(graph: Graph, mean: torch.Tensor, circuit: "Circuit", change: str) -> str:
    """Why a rule's circuit is empty and what to change: the |score| down to which edges must be
    taken for the first one to connect (empty when the circuit is not)."""
    if circuit.edges:
        return ""
    ranked = ranked_edges(mean)
    k = shortest_connected_prefix(graph, ranked, 1)
    return (f"None of the {len(circuit.selected)} selected edges lies on a path from the input "
            f"to the logits, so the circuit is empty. The first connected circuit by |score| "
            f"needs the top {k} edges (|score| >= {abs(float(mean[ranked[k - 1]])):.4g}): "
            f"{change}, or select with --top (connected edges).")


# -- faithfulness ------------------------------------------------------------------------------
class CircuitEvaluator:
    """Metric of the ``run`` prompts with every edge outside a circuit ablated (``how``).

    Built on an :class:`~attrscope.edges.methods.EdgeRun`: its run prompt is the one evaluated
    and its source prompt is "the other prompt". :meth:`for_task` builds it for ``run="clean"``
    (direction noising: the corrupted prompt is the other one, as in MIB) or ``"corrupted"``.
    """

    def __init__(self, er: EdgeRun, how: str = "other", max_batch_rows: int = 64,
                 positions: Positions | None = None):
        if how not in ABLATIONS:
            raise ValueError(f"Ablation {how!r} is unknown; choose from {', '.join(ABLATIONS)}.")
        self.er, self.how, self.max_batch_rows = er, how, max(1, int(max_batch_rows))
        self.positions = positions
        rows = torch.arange(er.n, device=er.run_embed.device)
        with torch.no_grad():
            run_out = er.forward.outputs(er.run_embed, *er.answer_args(rows))[1]
        source_out = run_out + er.delta  # [n, P, n_sources, d]
        if how == "other":
            self.values = source_out
        elif how == "zero":
            self.values = torch.zeros_like(run_out[:1])
        else:
            lengths = (er.task.answer_pos + 1).to(run_out.device).repeat(2)
            both = torch.cat([run_out, source_out])
            self.values = per_position_mean(both, lengths, both.shape[1]).unsqueeze(0)

    @classmethod
    def for_task(cls, model, task, how: str = "other", run: str = "clean",
                 max_batch_rows: int = 64, positions="all") -> "CircuitEvaluator":
        """``positions``: the setting of position-resolved circuits to evaluate (``"each"`` or
        position names, resolved on ``task``), ``"all"`` for circuits of whole edges only."""
        if run not in ("clean", "corrupted"):
            raise ValueError(f"run must be 'clean' or 'corrupted', got {run!r}.")
        resolved = resolve_positions(task, positions)
        er = EdgeRun.prepare(model, task, "noising" if run == "clean" else "denoising")
        return cls(er, how, max_batch_rows, resolved)

    @property
    def graph(self) -> Graph:
        return self.er.graph

    def metrics(self, circuits: Sequence[Sequence[int] | torch.Tensor]) -> torch.Tensor:
        """``[len(circuits), n]`` metric per sample with everything outside each circuit
        ablated: a circuit is a list of kept edge indices (each kept at every position), or a
        bool ``[n_edges, n_pos]`` of kept (edge, position) pairs at the evaluator's
        ``positions`` (:meth:`kept_at`)."""
        er, n = self.er, self.er.n
        kept = [self.kept_at(c, i) for i, c in enumerate(circuits)]
        out = torch.empty(len(circuits), n)
        device = er.run_embed.device
        per_pass = max(1, self.max_batch_rows // n)
        with torch.no_grad():
            for batch in chunks(range(len(circuits)), per_pass):
                batch = list(batch)
                c = len(batch)
                mask = self._ablation_mask([kept[i] for i in batch]).to(device)
                rows = torch.arange(n, device=device).repeat(c)
                values = self.values if self.values.shape[0] == 1 else self.values[rows]
                ablate = EdgeAblation(mask, values)
                metric = er.forward.ablated(er.run_embed[rows], *er.answer_args(rows), ablate)
                out[batch] = metric.view(c, n).float().cpu()
        return out

    def kept_at(self, circuit: Sequence[int] | torch.Tensor, i: int = 0
                ) -> Bool[torch.Tensor, "n_or_1 P_or_1 n_edges"]:
        """Which edges a circuit keeps at each absolute position of each prompt: ``[1, 1,
        n_edges]`` for a list of edges (every position), ``[n, P, n_edges]`` for kept (edge,
        position) pairs ``[n_edges, n_pos]``: entry j of the position axis is each prompt's own
        token ``positions.index[:, j]``; positions no entry names keep no edge."""
        graph = self.graph
        if isinstance(circuit, torch.Tensor):
            positions = self.positions
            if positions is None or tuple(circuit.shape) != (graph.n_edges, positions.n_pos):
                raise ValueError(
                    f"Circuit {i} is a [n_edges, n_pos] mask of shape {tuple(circuit.shape)}; "
                    f"this evaluator takes [{graph.n_edges}, "
                    f"{'(no positions)' if positions is None else positions.n_pos}]: build it "
                    "with the positions setting of the scores.")
            kept = torch.zeros(self.er.n, self.er.run_embed.shape[1], graph.n_edges,
                               dtype=torch.bool)
            rows = torch.arange(self.er.n)
            for j in range(positions.n_pos):
                kept[rows, positions.index[:, j]] |= circuit[:, j].bool()
            return kept
        edges = [int(e) for e in circuit]
        bad = [e for e in edges if not 0 <= e < graph.n_edges]
        if bad:
            raise ValueError(f"Circuit {i} has edge indices {bad} outside "
                             f"0..{graph.n_edges - 1}.")
        kept = torch.zeros(1, 1, graph.n_edges, dtype=torch.bool)
        kept[..., edges] = True
        return kept

    def _ablation_mask(self, kept: list[torch.Tensor]) -> Float[torch.Tensor, "R P_or_1 V S"]:
        """The :class:`EdgeAblation` mask of circuits' kept edges (:meth:`kept_at`), their
        ``n`` rows each stacked circuit-major; a size-1 position axis when no circuit has
        positions."""
        graph, n = self.graph, self.er.n
        length = max(k.shape[1] for k in kept)
        mask = torch.zeros(len(kept), n, length, graph.n_dests, graph.n_sources)
        for i, k in enumerate(kept):
            ablated = (~k).float().expand(n, length, -1)
            mask[i][:, :, graph.dest_index, graph.source_index] = ablated
        return mask.flatten(0, 1)

    def faithfulness(self, circuit: Circuit | Sequence[int] | torch.Tensor) -> dict[str, float]:
        """m(circuit), m(model), m(empty) (means over samples) and f (module docstring);
        ``circuit`` as :meth:`metrics` takes one, or a :class:`Circuit`."""
        kept = circuit.edges if isinstance(circuit, Circuit) else circuit
        if not isinstance(kept, torch.Tensor):
            kept = list(kept)
        m_model, m_empty, m_circuit = self.metrics(
            [range(self.graph.n_edges), [], kept]).mean(dim=1).double().tolist()
        gap = m_model - m_empty
        size = {"n_pairs": int(kept.sum())} if isinstance(kept, torch.Tensor) else \
            {"n_edges": len(kept)}
        return {"ablation": self.how, "m_circuit": m_circuit, "m_model": m_model,
                "m_empty": m_empty, "f": (m_circuit - m_empty) / gap if gap else float("nan"),
                **size}

    def curve(self, mean: torch.Tensor, fractions: Sequence[float] = FRACTIONS) -> dict:
        """Faithfulness of the connected circuits of x % of the edges by ``mean`` ``[n_edges]``
        scores (:func:`connected_top`: as many connected edges as asked, where one exists).

        Returns fractions, selected (edges asked for) and sizes (edges of the circuit) per
        fraction, f per fraction, cpr, cmd, m_model, m_empty, and their bootstrap intervals over
        prompts (:func:`~attrscope.analysis.verify.curve_from_metrics`).
        """
        graph = self.graph
        selected = [min(graph.n_edges, max(1, round(f * graph.n_edges))) for f in fractions]
        circuits = [connected_top(graph, mean, k)[0] for k in selected]
        metrics = self.metrics([range(graph.n_edges), []] + circuits)
        return {"ablation": self.how, "selected": selected, "sizes": [len(c) for c in circuits],
                **curve_from_metrics(metrics, fractions)}


# -- picture -----------------------------------------------------------------------------------
def node_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: y grows with depth (input 0, layer l's heads 2l + 1, its MLP
    2l + 2, logits 2 L + 1); heads spread along x, MLPs in a column right of them (alternately
    shifted so that MLP-to-MLP edges do not run through MLPs between), input and logits
    centred. A grouped-query key/value input ``l.kv{g}`` sits below its group's heads."""
    mid = (graph.n_heads - 1) / 2
    pos = {"input": (mid, 0.0), "logits": (mid, 2.0 * graph.n_layers + 1)}
    G = graph.group_size
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            pos[f"{layer}.{head}"] = (float(head), 2.0 * layer + 1)
        if G > 1:
            for g in range(graph.n_kv_heads):
                pos[graph.kv_name(layer, g)] = (g * G + (G - 1) / 2, 2.0 * layer + 0.6)
        pos[f"mlp {layer}"] = (graph.n_heads + 0.6 * (layer % 2), 2.0 * layer + 2)
    return pos


def plot_circuit(circuit: Circuit, path: str | Path, title: str | None = None) -> Path:
    """Save a PNG of the circuit: nodes by layer, edge width ~ |score|, blue positive / red
    negative score, line style by destination input (q solid, k dashed, v dotted, MLP and
    logits solid). A grouped-query key/value input is a small square below its group's heads,
    joined by thin grey lines to those of them in the circuit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graph = circuit.graph
    pos = node_positions(graph)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * graph.n_heads + 2),
                                    max(5.0, 0.8 * (2 * graph.n_layers + 2))))
    scores = circuit.scores
    biggest = max((abs(float(scores[e])) for e in circuit.edges), default=0.0) \
        if scores is not None else 0.0
    styles = {"q": "-", "k": "--", "v": ":", None: "-"}
    for e in circuit.edges:
        name, which = graph.dest_names[int(graph.dest_index[e])]
        (x0, y0), (x1, y1) = pos[graph.source_names[int(graph.source_index[e])]], pos[name]
        value = float(scores[e]) if scores is not None else 1.0
        width = 0.4 + 4.0 * abs(value) / biggest if biggest > 0 else 1.0
        ax.plot([x0, x1], [y0, y1], styles[which], lw=width, alpha=0.7,
                color="tab:blue" if value >= 0 else "tab:red", zorder=1)
    nodes = circuit.nodes()
    shared = {graph.dest_index[e].item() for e in circuit.edges
              if len(graph.dest_heads(int(graph.dest_index[e]))) > 1}
    for dest in sorted(shared):  # a grouped key/value input: a small marker joined to its heads
        name = graph.dest_names[dest][0]
        x, y = pos[name]
        for head in graph.dest_heads(dest):
            if graph.source_names[head] in nodes:
                hx, hy = pos[graph.source_names[head]]
                ax.plot([x, hx], [y, hy], "-", lw=0.8, color="grey", zorder=1)
        ax.scatter([x], [y], s=160, marker="s", color="white", edgecolors="grey", zorder=2)
        ax.annotate(name.split(".", 1)[1], (x, y), ha="center", va="center", fontsize=5, zorder=3)
    for name in nodes:
        x, y = pos[name]
        ax.scatter([x], [y], s=520, color="white", edgecolors="black", zorder=2)
        short = {"input": "in", "logits": "out"}.get(name, name.replace("mlp ", "m"))
        ax.annotate(short, (x, y), ha="center", va="center", fontsize=7, zorder=3)
    ax.set_yticks([0] + [2 * l + 1 for l in range(graph.n_layers)] + [2 * graph.n_layers + 1])
    ax.set_yticklabels(["input"] + [f"layer {l}" for l in range(graph.n_layers)] + ["logits"])
    ax.set_xticks([])
    ax.set_xlim(-1, graph.n_heads + 1.5)
    ax.set_title(title or f"circuit: {circuit.rule}, {len(circuit.edges)} edges "
                          "(blue +, red -; q solid, k dashed, v dotted)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
