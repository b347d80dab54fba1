"""Rough cost of a run before it starts, so the CLI can warn about long ones.

Costs are counted in *sample-passes*: one forward of one prompt through the whole model; a
backward counts as two. The counts follow each method's documented cost (its module docstring)
and are upper bounds where a method runs only part of the model (``ap`` and ``ig`` patch from a
layer on). Seconds are sample-passes times the measured time of one forward of the task's batch
divided by its size: an order of magnitude, not a promise (batching makes passes cheaper).
"""

from __future__ import annotations

import time

import torch

LONG_RUN_S = 60.0  # the CLI prints the estimate above this


def node_passes(method: str, settings: dict, cfg, n: int, kinds: list[str]) -> int:
    """Sample-passes of a node method (``ap``, ``atp``, ``ig``, ``atpstar``) on ``n`` samples."""
    units = {"heads": cfg.n_heads, "neurons": cfg.d_mlp}
    layers = cfg.n_layers
    if method == "ap":
        chosen = settings.get("units") or {}
        return n * sum(layers * len(chosen.get(k, range(units[k]))) for k in kinds)
    if method == "atp":
        return n * 4  # run and source forwards, one backward
    if method == "ig":
        return n * len(kinds) * layers * int(settings.get("n_steps", 50)) * 3
    if method == "atpstar":
        backwards = layers + 1 if settings.get("graddrop", True) else 1
        return n * (3 + 2 * backwards)
    return n * 4


def edge_passes(method: str, graph, n: int, steps: int) -> int:
    """Sample-passes of an edge method (``eap``, ``eap-ig``, ``eap-ig-act``, ``exact``)."""
    if method == "exact":
        return n * graph.n_edges
    if method == "eap-ig":
        return n * steps * 3
    if method == "eap-ig-act":
        return n * steps * (2 * graph.n_layers + 1) * 3
    return n * 4


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
