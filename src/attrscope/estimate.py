"""Rough cost of a run before it starts, so the CLI can warn about long ones.

Costs are counted in *sample-passes*: one forward of one prompt through the whole model; a
backward counts as two. Each method declares its count at registration (``register(...,
passes=...)``, one of the cost functions below), following its documented cost (its module
docstring), so no method is special-cased here. The counts are upper bounds where a method runs
only part of the model (``ap`` and ``ig`` patch from a layer on). Seconds are sample-passes times the measured time of one forward of the task's batch
divided by its size: an order of magnitude, not a promise (batching makes passes cheaper).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

LONG_RUN_S = 60.0  # the CLI prints the estimate above this


@dataclass(frozen=True)
class ModelShape:
    """What pass counts depend on: layers, units per component kind, edges of the graph."""

    n_layers: int
    units: dict[str, int]
    n_edges: int

    @classmethod
    def of_config(cls, cfg) -> "ModelShape":
        from .components import KINDS
        from .edges.graph import Graph

        graph = Graph(cfg.n_layers, cfg.n_heads, getattr(cfg, "n_key_value_heads", None),
                      parallel=bool(getattr(cfg, "parallel_attn_mlp", False)))
        return cls(cfg.n_layers, {name: kind.n_units(cfg) for name, kind in KINDS.items()},
                   graph.n_edges)


# A method's cost, declared at its registration (``register(..., passes=...)``):
# ``passes(settings with defaults, shape, n, kinds) -> sample-passes``.
def run_source_and_backward(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """Run and source forwards and one backward (atp, eap)."""
    return n * 4


def patch_each_unit(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """One forward per unit of every layer (or per unit chosen by ``units``)."""
    chosen = settings.get("units") or {}
    return n * sum(shape.n_layers * len(chosen.get(k, range(shape.units[k]))) for k in kinds)


def integrate_each_layer(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per integration step, layer and kind (``n_steps``)."""
    return n * len(kinds) * shape.n_layers * int(settings["n_steps"]) * 3


def backward_per_dropped_layer(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """Three forwards and one backward, plus one per layer with ``graddrop``."""
    backwards = shape.n_layers + 1 if settings["graddrop"] else 1
    return n * (3 + 2 * backwards)


def integrate_inputs(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per integration step (``steps``)."""
    return n * int(settings["steps"]) * 3


def integrate_each_stage(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per step and destination stage (or sublayer): 2 L + 1 of them."""
    return n * int(settings["steps"]) * (2 * shape.n_layers + 1) * 3


def patch_each_edge(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """One forward per edge."""
    return n * shape.n_edges


def passes(method: str, settings: dict, shape: ModelShape, n: int, kinds=()) -> int:
    """Sample-passes of ``method`` on ``n`` samples, from the cost it declared at registration
    (its defaults filled in); a method that declared none counts as 2 forwards + 1 backward."""
    from .registry import get_method

    spec = get_method(method)
    if spec.passes is None:
        return n * 4
    return spec.passes({**spec.defaults, **settings}, shape, n, list(kinds))


def node_passes(method: str, settings: dict, cfg, n: int, kinds: list[str]) -> int:
    """Sample-passes of a method on ``n`` samples of a model with config ``cfg``."""
    return passes(method, settings, ModelShape.of_config(cfg), n, kinds)


def edge_passes(method: str, graph, n: int, steps: int) -> int:
    """Sample-passes of an edge method on ``n`` samples of ``graph`` with ``steps`` (ignored by
    methods without that setting)."""
    return passes(method, {"steps": steps}, ModelShape(graph.n_layers, {}, graph.n_edges), n)


def seconds_per_sample_pass(model, tokens: torch.Tensor) -> float:
    """Time of one forward of ``tokens`` ``[n, pos]`` divided by ``n``."""
    with torch.no_grad():
        started = time.perf_counter()
        model(tokens)
        return (time.perf_counter() - started) / max(1, len(tokens))


def describe(passes: int, seconds: float) -> str:
    minutes = seconds / 60
    when = f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min"
    return (f"estimate: about {passes:,} sample-passes (forward equivalents), roughly {when} "
            "at the speed of one timed forward (an order of magnitude)")
