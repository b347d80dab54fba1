"""The one memory model of a batched pass, used by node passes, edge passes and shard plans.

A pass stacks rows (patched copies x samples) along the batch; its peak memory grows linearly
in the rows. :func:`bytes_per_row` estimates, generously, what one row adds to a pass of a given
:class:`PassShape` through a model of given :class:`Widths`; :func:`rows_for_budget` is how many
rows fit a budget.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Widths:
    """What a row's memory depends on besides the pass's shape. ``input_copies``: input copies
    of the stream per layer a pass keeps besides the stream (an edge pass: one per attention
    input slot, the MLP's and the logits'); ``sources``: outputs per position it keeps (an edge
    pass that records every source's output)."""

    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    input_copies: int = 0
    sources: int = 0

    @classmethod
    def of_config(cls, cfg) -> "Widths":
        return cls(int(cfg.d_model), int(cfg.d_mlp), int(cfg.n_heads), int(cfg.d_vocab))

    @classmethod
    def of_adapter(cls, adapter, graph=None) -> "Widths":
        """An adapter's widths; with the edge ``graph``, an edge pass's."""
        extra = {} if graph is None else {"input_copies": graph.n_attn_dests + 2,
                                          "sources": graph.n_sources}
        return cls(adapter.d_model, adapter.d_mlp, adapter.n_heads, int(adapter.W_U.shape[1]),
                   **extra)


@dataclass(frozen=True)
class PassShape:
    """A pass computing ``positions`` query positions that attend to ``keys`` positions through
    ``layers`` blocks; ``backward``: autograd keeps every block's intermediates for a backward;
    ``logits``: it computes full-vocabulary logits at every position."""

    positions: int
    keys: int
    layers: int
    backward: bool = False
    logits: bool = False


def bytes_per_row(widths: Widths, shape: PassShape, itemsize: int) -> int:
    """A generous estimate of the peak memory one stacked row adds to a pass.

    Without gradients only one block's intermediates live at a time (residual copies, queries,
    keys and values, attention scores, MLP hidden activations); with ``backward`` autograd keeps
    every block's; ``logits`` adds full-vocabulary logits at every position; input copies and
    recorded outputs add theirs. For a backward an input copy counts eight times: the copy, its
    normed form and the projections' inputs autograd keeps, their gradients, and the gradients
    an edge pass gathers per destination (three times undercounted it: eap-ig passes of 5-30
    rows on the GPT-2-small shape took 1.25-1.4x their planned bytes, which let eap-ig reach
    16 GB under a 10 GB budget; eight: 0.90-0.97x at 4-8 rows).
    """
    d, m, heads = widths.d_model, widths.d_mlp, widths.n_heads
    P, K = shape.positions, shape.keys
    elements = P * (12 * d + 4 * m) + 2 * K * d + 3 * heads * P * K
    if shape.backward:
        elements += shape.layers * (P * (10 * d + 3 * m) + 2 * K * d + 2 * heads * P * K)
    if shape.logits:
        elements += 2 * P * widths.d_vocab
    if shape.backward:
        elements += 8 * shape.layers * P * widths.input_copies * d + P * widths.sources * d
    elif widths.input_copies:
        # a patched edge pass: one block's intermediates live at a time, and its additions (an
        # MLP's or the logits' input for every row; a slot's only for the rows patched there).
        # Counting every layer's input copies put exact's pass at 6-9x its measured peak.
        elements += (shape.layers + 1) * P * d
    return max(1, elements * itemsize)


# Rows past which a patched edge pass (no backward) ran slower per row on the CPU, its
# intermediates falling out of cache: exact on the embedded model, 20 prompts, took 6.3 s in
# passes of 1,280 rows and 9.1 s in passes of 4,638 (what 2 GiB allowed).
EDGE_PATCH_MAX_ROWS = 1024
# Edges per resumable chunk of exact edge patching, fixed so chunk names never depend on the
# batching; a pass never spans two chunks (the estimates count its passes so).
EXACT_CHUNK = 256


def rows_for_budget(widths: Widths, shape: PassShape, budget: int, itemsize: int) -> int:
    """Rows one pass of ``shape`` may hold in ``budget`` bytes (at least 1)."""
    return max(1, int(budget) // bytes_per_row(widths, shape, itemsize))
