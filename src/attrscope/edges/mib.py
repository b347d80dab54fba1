"""Edge scores and circuits in the EAP-IG / MIB circuit-track graph JSON format.

The format (as EAP-IG's ``Graph.to_json`` / ``Graph.from_json`` document it) is one JSON object:

- ``cfg``: ``{"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}`` (EAP-IG rebuilds the graph
  from it; attrscope's graph is sequential, so ``parallel_attn_mlp`` is false);
- ``nodes``: ``{name: {"in_graph": bool}}`` for ``input``, ``a{l}.h{h}`` (head ``h`` of layer
  ``l``), ``m{l}`` (MLP ``l``) and ``logits``; an optional ``score`` per node is ignored here;
- ``edges``: ``{name: {"score": float, "in_graph": bool}}``, named ``parent->child`` and, into an
  attention head, ``parent->child<q|k|v>`` (``input->a1.h2<q>``, ``a0.h1->m0``, ``m1->logits``).

Names map one to one onto attrscope's (:mod:`attrscope.edges.graph`): ``input`` = ``input``,
``a5.h1`` = ``5.1``, ``m2`` = ``mlp 2``, ``logits`` = ``logits``, and ``a5.h5->a8.h6<q>`` =
``5.5 -> 8.6 (q)``; both graphs have the same edges. An edge's ``score`` is attrscope's mean
score over samples (sign convention of the result, recorded under the extra top-level key
``attrscope``, which EAP-IG ignores), and ``in_graph`` marks the edges of a circuit. Grouped-query
graphs (``l.kv{g}`` inputs) have no counterpart in the format and are refused.

**Position-resolved scores.** The MIB circuit track's graphs have no positions. EAP-IG's
``positional`` branch writes positional graphs as the same object plus ``"n_pos"``, with every
node named per position (``input_3``, ``a5.h1_3``, ``m2_3``, ``logits_3``). Position-resolved
scores are written that way, one entry per (edge, position) pair, both ends at the same
position: ``a5.h5_3->a8.h6_3<q>`` is ``5.5 -> 8.6 (q)`` at entry 3 of the position axis (token 3
for ``positions="each"``; for named positions the entry's name is in
``attrscope.positions.labels``). EAP-IG's positional graph also has key/value edges from earlier
positions (``a0.h1_2->a1.h0_5<k>``); attrscope does not score those, so they are absent.
``attrscope.positions`` records the setting and the labels of the axis. :func:`from_mib` reads
such files back.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ..scores import EDGES, Scores
from .circuit import Circuit
from .graph import Graph, edge_label
from .positional import PositionCircuit

_HEAD = re.compile(r"^a(\d+)\.h(\d+)$")
_MLP = re.compile(r"^m(\d+)$")
_EDGE = re.compile(r"^([^<>]+)->([^<>]+?)(?:<([qkv])>)?$")


# -- names -------------------------------------------------------------------------------------
def node_to_mib(name: str) -> str:
    """attrscope node name -> MIB: ``5.1`` -> ``a5.h1``, ``mlp 2`` -> ``m2``."""
    if name in ("input", "logits"):
        return name
    if name.startswith("mlp "):
        return f"m{int(name[4:])}"
    layer, head = name.split(".")
    return f"a{int(layer)}.h{int(head)}"


def node_from_mib(name: str) -> str:
    """MIB node name -> attrscope: ``a5.h1`` -> ``5.1``, ``m2`` -> ``mlp 2``."""
    if name in ("input", "logits"):
        return name
    if head := _HEAD.match(name):
        return f"{int(head[1])}.{int(head[2])}"
    if mlp := _MLP.match(name):
        return f"mlp {int(mlp[1])}"
    raise ValueError(f"{name!r} is not an EAP-IG/MIB node name (input, a<l>.h<h>, m<l>, logits).")


def edge_names(graph: Graph) -> list[str]:
    """``[n_edges]`` MIB edge names in attrscope's edge order."""
    _refuse_grouped(graph)
    names = []
    for dest, (node, which) in enumerate(graph.dest_names):
        child = node_to_mib(node) + (f"<{which}>" if which else "")
        names += [f"{node_to_mib(graph.source_names[s])}->{child}"
                  for s in range(int(graph.n_upstream[dest]))]
    return names


def edge_from_mib(name: str) -> str:
    """MIB edge name -> attrscope edge label: ``a5.h5->a8.h6<q>`` -> ``5.5 -> 8.6 (q)``."""
    match = _EDGE.match(name)
    if not match:
        raise ValueError(f"{name!r} is not an EAP-IG/MIB edge name (parent->child[<q|k|v>]).")
    return edge_label(node_from_mib(match[1]), node_from_mib(match[2]), match[3])


def _refuse_grouped(graph: Graph) -> None:
    if graph.group_size != 1:
        raise ValueError(f"The graph {graph.as_dict()} has grouped-query attention: its key and "
                         "value inputs (l.kv{g}) have no EAP-IG/MIB edge names.")


# -- export ------------------------------------------------------------------------------------
def to_mib(scores: Scores | None = None, circuit: Circuit | PositionCircuit | None = None,
           d_model: int | None = None) -> dict:
    """The MIB graph JSON object of edge ``scores`` (mean over samples) and/or a ``circuit``
    (its edges ``in_graph``; its own scores when ``scores`` is None, unscored edges 0).
    ``d_model`` (EAP-IG's cfg needs it) defaults to the result's ``meta["model_config"]``.
    Position-resolved scores and :class:`PositionCircuit` give one entry per (edge, position)
    pair, named as EAP-IG's positional graphs name them (module docstring)."""
    if scores is None and circuit is None:
        raise ValueError("Give edge scores, a circuit, or both.")
    if scores is not None and EDGES not in scores:
        raise ValueError(f"These scores have no {EDGES!r} kind (kinds: {scores.kinds}).")
    graph = scores.graph if scores is not None else circuit.graph
    if circuit is not None and circuit.graph != graph:
        raise ValueError(f"The circuit's graph {circuit.graph.as_dict()} is not the scores' "
                         f"{graph.as_dict()}.")
    positions = _positions(scores, circuit)
    meta = scores.meta if scores is not None else {}
    d_model = d_model or (meta.get("model_config") or {}).get("d_model")
    if d_model is None:
        raise ValueError("EAP-IG's graph cfg needs d_model; pass d_model=model.cfg.d_model.")
    n_pos = 1 if positions is None else len(positions["labels"])
    mean = scores.mean(EDGES) if scores is not None else circuit.scores
    mean = torch.zeros(graph.n_edges * n_pos) if mean is None else mean.flatten()
    in_graph = torch.zeros(graph.n_edges * n_pos, dtype=torch.bool)
    if circuit is not None:
        in_graph[circuit.pairs if positions else circuit.edges] = True
    at = [""] if positions is None else [f"_{j}" for j in range(n_pos)]
    names = [name.replace("->", f"{p}->").replace("<", f"{p}<") + ("" if "<" in name else p)
             for name in edge_names(graph) for p in at]
    edges = {name: {"score": _finite(mean[x]), "in_graph": bool(in_graph[x])}
             for x, name in enumerate(names)}
    kept_nodes = _kept_nodes(graph, circuit, n_pos)
    nodes = {node_to_mib(n) + p: {"in_graph": (n + p) in kept_nodes or n == "logits"}
             for n in graph.source_names + ["logits"] for p in at}
    out = {"cfg": {"n_layers": graph.n_layers, "n_heads": graph.n_heads,
                   "parallel_attn_mlp": False, "d_model": int(d_model)},
           "nodes": nodes, "edges": edges,
           "attrscope": {k: meta.get(k) for k in ("method", "direction", "sign_convention",
                                                  "metric", "model", "settings")}
           | {"score": "mean over samples of the edge score (unscored edges: 0)",
              "circuit": None if circuit is None else circuit.rule}}
    if positions is not None:
        out["n_pos"] = n_pos
        out["attrscope"]["positions"] = positions
        out["attrscope"]["score"] = ("mean over samples of the edge score at the position "
                                     "(unscored pairs: 0)")
    return out


def _positions(scores: Scores | None, circuit) -> dict | None:
    """``{"setting", "labels"}`` of position-resolved scores or circuit, else None; refuses a
    mix of the two resolutions."""
    of_scores = None if scores is None or scores.position_labels is None else \
        {"setting": scores.meta["positions"]["setting"], "labels": scores.position_labels}
    of_circuit = {"setting": circuit.setting, "labels": circuit.positions} \
        if isinstance(circuit, PositionCircuit) else None
    if scores is not None and circuit is not None and of_scores != of_circuit:
        raise ValueError(f"The circuit's positions ({of_circuit}) are not the scores' "
                         f"({of_scores}); export a circuit with the scores it was selected from.")
    return of_scores or of_circuit


def _kept_nodes(graph: Graph, circuit, n_pos: int) -> set[str]:
    """attrscope node names (``_j`` appended by position for a :class:`PositionCircuit`) of the
    nodes of a circuit's kept edges."""
    if circuit is None:
        return set()
    if not isinstance(circuit, PositionCircuit):
        return set(circuit.nodes())
    nodes = set()
    for j in range(n_pos):
        edges = [x // n_pos for x in circuit.pairs if x % n_pos == j]
        nodes |= {f"{name}_{j}" for name in Circuit(graph, edges, edges, "").nodes()}
    return nodes


def _finite(value: torch.Tensor) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0  # the format has no NaN (strict JSON)


def save_mib_json(path: str | Path, scores: Scores | None = None,
                  circuit: Circuit | None = None, d_model: int | None = None) -> Path:
    """Write :func:`to_mib` to ``path``; EAP-IG reads it with ``Graph.from_json(path)``."""
    path = Path(path)
    path.write_text(json.dumps(to_mib(scores, circuit, d_model)))
    return path


# -- import ------------------------------------------------------------------------------------
def from_mib(data: dict, source: str = "the graph"
             ) -> tuple[Scores, Circuit | PositionCircuit]:
    """Edge scores (one pseudo-sample: the file's scores) and the circuit of its ``in_graph``
    edges, from a MIB graph JSON object. Edges missing from the file read NaN and are not in
    the circuit; names that are not edges of the graph are an error listing them. A positional
    graph (``n_pos``, as :func:`to_mib` writes it) gives ``[1, n_edges, n_pos]`` scores and a
    :class:`PositionCircuit`; edges between two positions have no attrscope counterpart and are
    an error listing them."""
    missing = [k for k in ("cfg", "nodes", "edges") if k not in data]
    if missing:
        raise ValueError(f"{source}: not an EAP-IG/MIB graph (missing key(s) {missing}).")
    cfg = data["cfg"]
    if cfg.get("parallel_attn_mlp"):
        raise ValueError(f"{source}: parallel attention/MLP graphs are not supported.")
    graph = Graph(int(cfg["n_layers"]), int(cfg["n_heads"]))
    n_pos = 1 if data.get("n_pos") is None else int(data["n_pos"])
    scores = torch.full((graph.n_edges * n_pos,), float("nan"))
    in_graph, unknown = [], []
    for name, info in data["edges"].items():
        try:
            plain, j = _at_position(name) if data.get("n_pos") is not None else (name, 0)
            x = graph.edge_index[edge_from_mib(plain)] * n_pos + j
        except (ValueError, KeyError):
            unknown.append(name)
            continue
        scores[x] = float(info["score"]) if info.get("score") is not None else float("nan")
        if info.get("in_graph"):
            in_graph.append(x)
    if unknown:
        raise ValueError(f"{source}: edge(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                         f"are not edges of the graph {graph.as_dict()}"
                         f"{'' if n_pos == 1 else f' at one of its {n_pos} positions'}.")
    extra = data.get("attrscope") or {}
    meta = {"method": extra.get("method") or "mib-import", "direction": extra.get("direction"),
            "graph": graph.as_dict(), "components": [EDGES], "source": source,
            "model_config": {"n_layers": graph.n_layers, "n_heads": graph.n_heads,
                             "d_model": cfg.get("d_model")},
            "score": "the file's edge scores (one pseudo-sample)"}
    kept, rule = sorted(in_graph), f"in_graph of {source}"
    if data.get("n_pos") is None:
        result = Scores(values={EDGES: scores.view(1, -1)}, meta=meta)
        return result, Circuit(graph, kept, kept, rule, scores)
    meta["positions"] = extra.get("positions") or {"setting": "each", "labels": list(range(n_pos))}
    result = Scores(values={EDGES: scores.view(1, graph.n_edges, n_pos)}, meta=meta)
    positions = meta["positions"]
    return result, PositionCircuit(graph, positions["labels"], positions["setting"], kept, kept,
                                   rule, scores.view(graph.n_edges, n_pos))


_AT = re.compile(r"^(.+)_(\d+)->(.+)_(\d+)(<[qkv]>)?$")


def _at_position(name: str) -> tuple[str, int]:
    """A positional edge name ``a0.h1_3->a1.h0_3<q>`` -> (``a0.h1->a1.h0<q>``, 3); a
    ValueError for a name that is not one, or joins two positions."""
    match = _AT.match(name)
    if not match or match[2] != match[4]:
        raise ValueError(f"{name!r} is not an edge within one position.")
    return f"{match[1]}->{match[3]}{match[5] or ''}", int(match[2])


def load_mib_json(path: str | Path) -> tuple[Scores, Circuit | PositionCircuit]:
    """:func:`from_mib` of a JSON file written by EAP-IG's ``Graph.to_json`` (or attrscope)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No graph file at {path}.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}).") from None
    return from_mib(data, str(path))
