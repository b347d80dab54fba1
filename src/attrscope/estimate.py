"""Rough cost of a run before it starts, so the CLI can warn about long ones.

Costs are counted in *sample-passes*: one forward of one prompt through the whole model; a
backward counts as two. Each method declares its count at registration (``register(...,
passes=...)``, one of the cost functions below), following its documented cost (its module
docstring), so no method is special-cased here. The counts are upper bounds where a method runs
only part of the model (``ap`` and ``ig`` patch from a layer on).

Seconds (:func:`estimate_seconds`) are calibrated on the model and prompts at hand: the counted
passes, each weighted by the share of a full forward's FLOPs it really computes
(:meth:`ForwardShape.fraction`: suffix passes, answers-only unembedding, half-depth backwards),
times the measured time of a forward of the task's prompts per prompt (:func:`timed_forward`).
docs/performance.md ("Estimates before a run") compares them with measured times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from .arch import config_of
LONG_RUN_S = 60.0  # the CLI prints the estimate above this


@dataclass(frozen=True)
class ModelShape:
    """What pass counts depend on: layers, units per component kind, edges of the graph."""

    n_layers: int
    units: dict[str, int]
    n_edges: int
    # Tokens per prompt (padded): positions="each" patches every one of them (0: not known).
    seq: int = 0

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
    """One forward per unit of every layer (or per unit chosen by ``units``), and per position
    of the ``positions`` setting (:func:`position_count`)."""
    per_unit = position_count(settings.get("positions", "all"), shape.seq)
    if settings.get("screen"):  # the screen, then top-K + audit (unit, position) cells of each kind
        screened = {k: min(layers_of(k, shape.n_layers) * shape.units[k] * per_unit,
                           settings["screen_top_k"] + settings["screen_audit"]) for k in kinds}
        return passes(settings["screen"], {}, shape, n, kinds) + n * sum(screened.values())
    chosen = settings.get("units") or {}

    def units_of(kind: str) -> int:
        given = chosen.get(kind, range(shape.units[kind]))
        if isinstance(given, dict):  # per layer
            return sum(len(v) for v in given.values())
        return layers_of(kind, shape.n_layers) * len(given)

    return n * per_unit * sum(units_of(k) for k in kinds)


def layers_of(kind: str, n_layers: int) -> int:
    """Layers of a kind's scores (``resid_pre`` has the final stream as one more)."""
    from .components import KINDS

    return KINDS[kind].n_layers(n_layers) if kind in KINDS else n_layers


def position_count(setting, seq: int) -> int:
    """Patches per unit of a ``positions`` setting: 1 for ``"all"``, one per name, ``seq`` (the
    prompts' tokens) for ``"each"``."""
    from .tasks.positions import parse_setting

    chosen = parse_setting(setting)
    if chosen == "all":
        return 1
    if chosen == "each":
        if seq < 1:
            raise ValueError("positions='each': the pass count needs the prompts' length (seq).")
        return seq
    return len(chosen)


def integrate_each_layer(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per integration step, layer and kind (``n_steps``)."""
    return n * len(kinds) * shape.n_layers * int(settings["n_steps"]) * 3


def backward_per_dropped_layer(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """Three forwards and one backward, plus one per layer with ``graddrop``."""
    backwards = shape.n_layers + 1 if settings["graddrop"] else 1
    return n * (3 + 2 * backwards)


def integrate_inputs(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per integration step (``n_steps``)."""
    return n * int(settings["n_steps"]) * 3


def integrate_each_stage(settings: dict, shape: ModelShape, n: int, kinds) -> int:
    """A forward and backward per step and destination stage (or sublayer): 2 L + 1 of them."""
    return n * int(settings["n_steps"]) * (2 * shape.n_layers + 1) * 3


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


def node_passes(method: str, settings: dict, cfg, n: int, kinds: list[str], seq: int = 0) -> int:
    """Sample-passes of a method on ``n`` samples of ``seq`` tokens of a model with config
    ``cfg`` (``seq`` counts only for ``positions="each"``)."""
    shape = ModelShape.of_config(cfg)
    return passes(method, settings, replace(shape, seq=seq), n, kinds)


def edge_passes(method: str, graph, n: int, steps: int) -> int:
    """Sample-passes of an edge method on ``n`` samples of ``graph`` with ``steps`` (ignored by
    methods without that setting)."""
    return passes(method, {"n_steps": steps}, ModelShape(graph.n_layers, {}, graph.n_edges), n)


# Calibrated estimates. A pass counted by a cost function above is a full forward; the work a
# method really does per counted pass, relative to it, depends on where its passes run:
# - "full": every position through every layer and the unembedding (eap-ig, exact);
# - "suffix": from a layer on (on average half the blocks), only over the positions from the
#   first clean/corrupted difference to the answer, and the unembedding at the answer only
#   (ap, ig). The edge methods measured closer to full passes (their per-edge work).
SUFFIX_COSTS = ("patch_each_unit", "integrate_each_layer")
# - "half depth": atpstar's GradDrop backwards, each from the metric down to one layer.
HALF_DEPTH_COSTS = ("backward_per_dropped_layer",)
# - "answers unembedded": every position and block, the unembedding at the answer only (atp, eap).
ANSWER_UNEMBED_COSTS = ("run_source_and_backward",)
# What a counted pass costs beyond its FLOPs at the timed forward's speed, measured on the
# embedded model and the GPT-2-small shape (docs/performance.md, "Estimates"): suffix passes
# pay for their cached prefixes and smaller matrices; the gradient edge methods (eap, eap-ig)
# for their per-edge products of gradients and deltas. It was 2.0 while ap and ig ran every
# sample over the span of its group's widest: with groups that follow each sample's span
# (engine.sample_groups) 2.0 put ap at 1.86 (GPT-2 shape, heads) and 3.25 (embedded), ig at
# 1.87 and 1.6 of their measured times.
SUFFIX_OVERHEAD = 1.2
EDGE_GRADIENT_COSTS = ("run_source_and_backward", "integrate_inputs")
EDGE_GRADIENT_OVERHEAD = 2.0


@dataclass(frozen=True)
class ForwardShape:
    """FLOPs of one position through one block and through the unembedding; positions of the
    task's prompts (padded), and the positions a suffix pass covers (mean over samples)."""

    block_flops: float
    unembed_flops: float
    n_layers: int
    positions: int
    span: float

    @classmethod
    def of(cls, model, task) -> "ForwardShape":
        cfg = config_of(model)
        d, heads = cfg.d_model, cfg.n_heads
        d_head = getattr(cfg, "d_head", d // heads)
        kv = getattr(cfg, "n_key_value_heads", None) or heads
        mlp_mats = 3 if getattr(cfg, "gated_mlp", False) else 2
        positions = int(task.clean_tokens.shape[1])
        attention = 2 * d * d_head * (2 * heads + 2 * kv) + 2 * heads * d_head * positions
        block = attention + 2 * mlp_mats * d * cfg.d_mlp
        differs = task.clean_tokens != task.corrupted_tokens
        first = torch.where(differs.any(1), differs.float().argmax(1),
                            task.answer_pos).clamp(max=task.answer_pos)
        span = float((task.answer_pos + 1 - first).float().mean())
        return cls(float(block), float(2 * d * cfg.d_vocab), cfg.n_layers, positions, span)

    def stage_fraction(self, definition: str | None) -> float:
        """Work of one counted pass of ``eap-ig-act`` relative to a full forward: every position
        through the blocks its stage's pass runs (:func:`stage_blocks`, on average), the answers
        unembedded."""
        blocks = stage_blocks(self.n_layers, definition) / (2 * self.n_layers + 1)
        full = self.positions * (self.n_layers * self.block_flops + self.unembed_flops)
        return (self.positions * blocks * self.block_flops + self.unembed_flops) / full

    def fraction(self, cost: str) -> float:
        """Work of one counted pass of a ``cost`` function relative to a full forward."""
        full = self.positions * (self.n_layers * self.block_flops + self.unembed_flops)
        if cost in HALF_DEPTH_COSTS:  # every position, half the blocks, answers unembedded
            return (self.positions * self.n_layers / 2 * self.block_flops
                    + self.unembed_flops) / full
        if cost in ANSWER_UNEMBED_COSTS:  # every position and block, answers unembedded
            return (self.positions * self.n_layers * self.block_flops + self.unembed_flops) / full
        if cost not in SUFFIX_COSTS:
            return 1.0
        return SUFFIX_OVERHEAD * (self.span * self.n_layers / 2 * self.block_flops
                                     + self.unembed_flops) / full


def starts_from_streams(cost: str, settings: dict) -> bool:
    """Whether the method's passes start inside the model, from the run's residual streams
    (``EdgeRun.stream``), which it records first in a forward of the run and of the source:
    ``exact`` and ``eap-ig-act``'s default ``complete``."""
    return cost == "patch_each_edge" or (cost == "integrate_each_stage"
                                         and settings.get("definition") != "eap-ig")


def stage_blocks(n_layers: int, definition: str | None) -> float:
    """Blocks of ``eap-ig-act``'s passes per batch of rows: one pass per destination stage (2 L
    + 1 of them), from the stage's layer on (the MLP's: its layer's attention too; the logits'
    none) for the default ``complete``; from the embedding for ``eap-ig``'s sublayer passes."""
    if definition == "eap-ig":
        return (2 * n_layers + 1) * n_layers
    return n_layers * (n_layers + 1)


def setup_forwards(forward: ForwardShape, granularity: str) -> float:
    """Full forwards per prompt a run computes before its method's passes, its fixed cost
    (counted in tests/test_estimate.py with torch's FLOP counter, against the run itself):

    - a node method's :class:`attrscope.engine.Runner`: the run's forward through the model's
      hooks (a full forward), the block adapter's check of it and the source's forward on the
      adapter (each every position and block, the answer unembedded), and the check's suffix
      run (one block over the positions from the first difference on, for a model whose layers
      are alike);
    - an edge method's :meth:`attrscope.edges.methods.EdgeRun.prepare`: the run and the source
      each through the model's own forward (every position unembedded) and the edge forward
      (the answer unembedded).

    Short calls are mostly this: ``atp`` on 4 prompts of the GPT-2-small shape was estimated at
    0.28 of its time without it (docs/performance.md, "Estimates")."""
    full = forward.positions * (forward.n_layers * forward.block_flops + forward.unembed_flops)
    answers = forward.fraction("run_source_and_backward")
    if granularity == "edge":
        return 2 * 1.0 + 2 * answers
    check = (forward.span * forward.block_flops + forward.unembed_flops) / full
    return 1.0 + 2 * answers + check


class ForwardTime(float):
    """Seconds per prompt of a full forward as the methods run it (the float's value: what each
    row of a pass costs), with what a pass costs whatever its rows:

    - ``fixed``: seconds one batched pass through every block pays once, whatever its rows: a
      half-precision model's per-layer matrices cast to the compute dtype as they are read (and
      the q/k/v matrices put side by side); 0 where the methods compute in the model's dtype;
    - ``own``: seconds per prompt of the model's own forward (the run's setup uses it; for a
      half-precision model it computes in the model's dtype, far faster than its float32 passes).

    A plain float passed as ``per_pass`` is a ForwardTime with no fixed cost and ``own`` its
    value (a float, so the figures that carry it, e.g. compare's plan, stay plain numbers)."""

    fixed: float
    own: float

    def __new__(cls, per_row: float, fixed: float = 0.0, own: float | None = None):
        made = super().__new__(cls, per_row)
        made.fixed = float(fixed)
        made.own = float(per_row if own is None else own)
        return made

    def __reduce__(self):
        return ForwardTime, (float(self), self.fixed, self.own)


def forward_time(per_pass: float) -> ForwardTime:
    """``per_pass`` as a :class:`ForwardTime` (a plain float: no fixed cost)."""
    return per_pass if isinstance(per_pass, ForwardTime) else ForwardTime(per_pass)


# Rows of the second timed forward of a half-precision model (the task's prompts, repeated when
# fewer): with one row's time, it separates a pass's fixed cost from each row's.
SPLIT_ROWS = 4


def timed_forward(model, tokens: torch.Tensor, min_seconds: float = 0.25,
                  max_repeats: int = 9) -> ForwardTime:
    """Seconds of one forward of ``tokens`` ``[n, pos]`` per prompt, as the methods run it
    (:func:`methods_forward`): after one untimed warm-up forward (the first call pays one-time
    costs), the median of forwards repeated until ``min_seconds`` have passed (at most
    ``max_repeats``). The median, not the best: on a shared machine a long run meets the same
    contention as the typical forward.

    On a CPU it is timed with torch's threads and with one thread, and the faster counts: on a
    machine whose cores other processes hold, small forwards with several threads wait on each
    other (20x slower was measured on a loaded 2-core machine) far more than the long batched
    passes of a method do, so one thread's time is the better guide there.

    Where the methods compute in another dtype than the model's (a half-precision model), a pass
    pays a fixed cost per block whatever its rows (the cast of the layer's matrices): on the
    Llama-3.2-1B shape in bfloat16, 2.2 s of a 2.5 s forward of one 23-token prompt, 0.3 s per
    more prompt. It is separated by timing one prompt and ``max(n, SPLIT_ROWS)`` of them
    (:class:`ForwardTime`), and the model's own forward is timed too; timing the task's prompts
    alone priced every row of a pass that stacks many at the fixed cost shared by the few timed
    ones (``eap`` 3.65x and the verification 4.5x high on that shape, n=1)."""
    run, scale = methods_forward(model, tokens)
    with torch.no_grad():
        run(tokens[:1])  # one-time costs
    if run is model:
        return ForwardTime(scale * _fastest(run, tokens, min_seconds, max_repeats)
                           / max(1, len(tokens)))
    rows = tokens if len(tokens) >= SPLIT_ROWS else tokens[torch.arange(SPLIT_ROWS) % len(tokens)]
    with torch.no_grad():
        model(tokens[:1])
    own = _fastest(model, tokens, min_seconds, max_repeats) / len(tokens)
    for _ in range(SPLIT_TRIES):
        one, many = _paired(run, tokens[:1], rows, min_seconds, max_repeats)
        per_row = (many - one) / (len(rows) - 1)
        if per_row > 0 and one - per_row > 0:
            return ForwardTime(scale * per_row, one - per_row, own)
    # noise beyond the split every time: each row at the model's own forward's speed (pricing
    # each row at a whole pass put screened ap at 3.7x its time on the Llama shape)
    return ForwardTime(own, max(one - own / scale, 0.0), own)


# Times the split of a half-precision forward is tried before its fallback: on a loaded 2-core
# machine 1 in 5 splits came out with more rows no slower than one.
SPLIT_TRIES = 3


def _paired(run, one: torch.Tensor, many: torch.Tensor, min_seconds: float, max_repeats: int
            ) -> tuple[float, float]:
    """Median seconds of ``run(one)`` and ``run(many)`` under the same thread setting: on a CPU
    the pair of torch's threads or of one thread whose ``many`` is faster (each timed at its
    fastest setting apart, the split mixed two settings)."""
    pairs = [(_median_forward(run, one, min_seconds, max_repeats),
              _median_forward(run, many, min_seconds, max_repeats))]
    if many.device.type == "cpu" and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pairs.append((_median_forward(run, one, min_seconds, max_repeats),
                          _median_forward(run, many, min_seconds, max_repeats)))
        finally:
            torch.set_num_threads(threads)
    return min(pairs, key=lambda pair: pair[1])


def _fastest(run, tokens: torch.Tensor, min_seconds: float, max_repeats: int) -> float:
    """Median seconds of ``run(tokens)``; on a CPU the faster of torch's threads and one."""
    timings = [_median_forward(run, tokens, min_seconds, max_repeats)]
    if tokens.device.type == "cpu" and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            timings.append(_median_forward(run, tokens, min_seconds, max_repeats))
        finally:
            torch.set_num_threads(threads)
    return min(timings)


def methods_forward(model, tokens: torch.Tensor):
    """(forward, scale): a function that runs ``tokens`` as the methods do, and the factor from
    its time to a whole forward's. The model's own forward (scale 1), unless the methods compute
    in another dtype than the model's (a half-precision model, computed in float32 with each
    layer's matrices cast as it is read): then the block adapter's blocks in that dtype, scaled
    by the unembedding's share of the FLOPs. Timing the model's own bfloat16 forward made the
    estimates 5-9x low (docs/performance.md)."""
    from types import SimpleNamespace

    from . import arch
    from .arch import forward

    if arch.compute_dtype(model) == arch.model_dtype(model):
        return model, 1.0
    try:
        adapter = arch.adapter_for(model)
    except arch.Unsupported:
        return model, 1.0

    def blocks(batch: torch.Tensor) -> torch.Tensor:
        return forward.final_stream(adapter, arch.embedding(model, batch, adapter), forward.Plan())

    last = torch.full((len(tokens),), tokens.shape[1] - 1)
    shape = ForwardShape.of(model, SimpleNamespace(clean_tokens=tokens, corrupted_tokens=tokens,
                                                   answer_pos=last))
    work = shape.n_layers * shape.block_flops
    return blocks, (work + shape.unembed_flops) / work


def _median_forward(run, tokens: torch.Tensor, min_seconds: float, max_repeats: int) -> float:
    times = []
    with torch.no_grad():
        while len(times) < max_repeats and sum(times) < min_seconds:
            started = time.perf_counter()
            run(tokens)
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def estimate_seconds(model, task, method: str, settings: dict, kinds, *,
                     per_pass: float | None = None, setup: bool = True) -> float:
    """Seconds ``method`` should take on ``task``: its counted passes, each weighted by the work
    it really does (:meth:`ForwardShape.fraction`), plus the run's fixed setup
    (:func:`setup_forwards`; ``setup=False`` for a call that reuses another's run), at the speed
    of a timed forward of the task's prompts on this model (``per_pass``: seconds per prompt of
    a full forward, measured here by :func:`timed_forward` unless given), plus, where a pass has
    a fixed cost (:class:`ForwardTime`), that cost once per block of every batched pass
    (:func:`fixed_layer_passes`)."""
    from .edges.graph import Graph
    from .registry import get_method

    spec = get_method(method)
    timing = forward_time(timed_forward(model, task.clean_tokens) if per_pass is None
                          else per_pass)
    shape = ModelShape.of_config(config_of(model))
    if spec.granularity == "edge":
        shape = ModelShape(shape.n_layers, {}, Graph.of_model(model).n_edges)
        kinds = []
    resolved = {**spec.defaults, **settings}
    forward = ForwardShape.of(model, task)
    fixed = setup_seconds(forward, spec.granularity, task.n, timing) if setup else 0.0
    if timing.fixed:
        blocks = fixed_layer_passes(model, task, method, resolved, kinds)
        fixed += timing.fixed / forward.n_layers * blocks
    shape = replace(shape, seq=int(task.clean_tokens.shape[1]))
    count = spec.passes(resolved, shape, task.n, list(kinds)) if spec.passes else task.n * 4
    cost = getattr(spec.passes, "__name__", "")
    fraction = forward.fraction(cost)
    if cost == "patch_each_unit" and resolved.get("positions", "all") != "all":
        fraction = position_fraction(forward, task, resolved["positions"], kinds, config_of(model))
    elif cost == "patch_each_edge":
        fraction = edge_patch_fraction(model, task, resolved)
    elif cost == "integrate_each_stage":
        fraction = forward.stage_fraction(resolved.get("definition"))
    if resolved.get("screen"):  # the screen's passes (full ones), then the exact ones
        screen = get_method(resolved["screen"])
        screen_count = screen.passes(dict(screen.defaults), shape, task.n, list(kinds))
        return fixed + timing * (screen_count * forward.fraction(screen.passes.__name__)
                                 + (count - screen_count) * fraction)
    seconds = count * timing * fraction
    if spec.granularity == "edge" and cost in EDGE_GRADIENT_COSTS:
        seconds *= EDGE_GRADIENT_OVERHEAD
    if starts_from_streams(cost, resolved):
        seconds += 2 * task.n * timing
    return fixed + seconds


# The model's own forwards in a run's setup (:func:`setup_forwards`): the run's forward through
# the model's hooks (node methods); the run's and the source's (edge methods).
OWN_FORWARDS = {"node": 1, "edge": 2}


def setup_seconds(forward: ForwardShape, granularity: str, n: int, timing: ForwardTime) -> float:
    """Seconds of a run's setup (:func:`setup_forwards`) on ``n`` prompts: its forwards through
    the model's own forward at ``timing.own``, the rest at the methods' speed, and the fixed cost
    of its passes through the blocks (two whole ones, and for a node run the check's one
    block)."""
    own = OWN_FORWARDS[granularity]
    blocks = 2 * forward.n_layers + (1 if granularity == "node" else 0)
    return (n * (own * timing.own + (setup_forwards(forward, granularity) - own) * timing)
            + timing.fixed / forward.n_layers * blocks)


# A backward through a block re-pays this share of the forward's fixed cost: it casts again the
# matrices it multiplies by (the q/k/v matrices side by side are kept from the forward).
# Measured on the Llama-3.2-1B shape in bfloat16: 1.6-1.9 s of fixed cost for a backward of one
# and four prompts, against 2.2 s for the forward.
BACKWARD_FIXED = 0.8


def fixed_layer_passes(model, task, method: str, settings: dict, kinds) -> float:
    """Blocks ``method``'s batched passes run through the blocks after its setup (a backward
    counting BACKWARD_FIXED per block), each once per pass whatever its rows, as the method
    batches them: the rows a pass may stack (:func:`rows_per_pass`, as the method sizes its
    passes), passes per group of samples of similar length for ``ap``, from each layer on for
    ``ap`` and ``ig`` (half a block for the patched layer's rest). ``settings`` with defaults."""
    from .components import KINDS
    from .edges.graph import Graph
    from .engine import copies_per_pass
    from .registry import get_method

    spec = get_method(method)
    cost = getattr(spec.passes, "__name__", "run_source_and_backward")
    cfg = config_of(model)
    L, n = int(cfg.n_layers), task.n
    seq = int(task.clean_tokens.shape[1])
    back = 1 + BACKWARD_FIXED
    edge = spec.granularity == "edge"

    def passes(rows: int, **shape) -> int:
        return -(-rows // rows_per_pass(model, task, settings, edge=edge, **shape))

    if settings.get("screen"):
        screen = get_method(settings["screen"])
        total = fixed_layer_passes(model, task, settings["screen"], dict(screen.defaults), kinds)
        per_kind = settings["screen_top_k"] + settings["screen_audit"]
        for kind in (KINDS[k] for k in kinds):  # a pass per layer of chosen units, mean depth
            layers = min(kind.n_layers(L), per_kind)
            depth = sum(blocks_after(kind, layer, L) for layer in range(L)) / L
            total += layers * depth * sum(passes(size * -(-per_kind // layers), positions=end - start)
                                          for size, (start, end) in sample_spans(model, task))
        return total
    if cost == "patch_each_unit":
        total = 0.0
        spans = sample_spans(model, task)
        # the same units a pass in every group (activation_patching)
        copies = min(copies_per_pass(rows_per_pass(model, task, settings, positions=end - start,
                                                   keys=end), size) for size, (start, end) in spans)
        for _ in spans:
            for kind in (KINDS[k] for k in kinds):
                units = kind.n_units(cfg) * position_count(settings.get("positions", "all"), seq)
                total += sum(-(-units // copies) * blocks_after(kind, layer, L)
                             for layer in range(kind.n_layers(L)))
        return total
    if cost == "integrate_each_layer":  # per layer each group's steps' passes, then one more
        steps = int(settings["n_steps"])
        groups = sample_spans(model, task, settings.get("baseline", "matched") == "matched")

        def layer_passes(layer: int) -> float:
            return back * sum(-(-steps // copies_per_pass(rows_per_pass(
                model, task, settings, positions=end - start, keys=end, layers=L - layer,
                backward=True), size)) for size, (start, end) in groups) + 1

        return sum(blocks_after(kind, layer, L) * layer_passes(layer)
                   for kind in (KINDS[k] for k in kinds) for layer in range(kind.n_layers(L)))
    if cost == "backward_per_dropped_layer":  # two forwards, one with a backward, + GradDrop's
        chunks = passes(n, positions=seq, backward=True)
        dropped = (L + 1) * L / 2 if settings.get("graddrop") else L
        return chunks * (3 * L + BACKWARD_FIXED * dropped)
    streams = 2 * L if starts_from_streams(cost, settings) else 0
    if cost in ("integrate_inputs", "integrate_each_stage"):
        chunks = passes(n * int(settings["n_steps"]), positions=seq, backward=True)
        if cost == "integrate_inputs":
            return chunks * L * back
        return streams + chunks * stage_blocks(L, settings.get("definition")) * back
    if cost == "patch_each_edge":
        copies = exact_copies(model, task, settings)
        return streams + sum(blocks for _, blocks in exact_pass_depths(Graph.of_model(model),
                                                                        copies))
    return passes(n, positions=seq, backward=True) * L * back


def blocks_after(kind, layer: int, n_layers: int) -> float:
    """Blocks a pass that patches ``kind`` at ``layer`` runs: from the layer's middle for an
    attention unit (after the attention), from the next layer for an MLP unit, from the layer
    for the stream entering it."""
    return max(n_layers - layer - {"attn": 0.5, "mlp": 1.0}.get(kind.branch, 0.0), 0.0)


def sample_spans(model, task, from_start: bool = True) -> list[tuple[int, tuple[int, int]]]:
    """``(size, (start, end))`` per group of the task's samples as the node methods' passes
    take them on ``model`` (:func:`attrscope.engine.task_groups`): the group's size and the
    positions its passes compute, from its first clean/corrupted difference (``from_start``;
    else 0) to one past its last answer."""
    from .arch.memory import Widths
    from .engine import first_difference, task_groups

    groups = task_groups(task, Widths.of_config(config_of(model)), from_start)
    return [(len(g), (first_difference(task, g) if from_start else 0,
                      int(task.answer_pos[g].max()) + 1)) for g in groups]


def rows_per_pass(model, task, settings: dict, *, positions: int, keys: int | None = None,
                  layers: int | None = None, backward: bool = False, edge: bool = False) -> int:
    """Rows a pass over ``positions`` positions attending to ``keys`` (default every position)
    through ``layers`` blocks (default all) may stack, as the methods size it
    (``max_batch_rows`` when given, else what ``max_memory`` bytes allow, by default
    :func:`attrscope.engine.default_memory_budget`; ``edge``: with the edge forward's widths)."""
    from . import arch
    from .arch.memory import EDGE_PATCH_MAX_ROWS, PassShape, Widths, rows_for_budget
    from .edges.graph import Graph
    from .engine import default_memory_budget, parse_memory

    if settings.get("max_batch_rows") is not None:
        return max(1, int(settings["max_batch_rows"]))
    cfg = config_of(model)
    tokens = task.clean_tokens
    budget = settings.get("max_memory")
    budget = default_memory_budget(tokens.device) if budget is None else parse_memory(budget)
    widths = Widths.of_config(cfg)
    if edge:
        widths = edge_widths(widths, Graph.of_model(model))
    shape = PassShape(positions, int(tokens.shape[1]) if keys is None else keys,
                      int(cfg.n_layers) if layers is None else layers, backward)
    itemsize = torch.empty((), dtype=arch.compute_dtype(model)).element_size()
    rows = rows_for_budget(widths, shape, budget, itemsize)
    return min(rows, EDGE_PATCH_MAX_ROWS) if edge and not backward else rows


def edge_widths(widths, graph):
    """The memory model's widths of an edge forward on ``graph``: its per-destination input
    copies and recorded source outputs."""
    from .arch.memory import Widths

    return Widths(widths.d_model, widths.d_mlp, widths.n_heads, widths.d_vocab,
                  graph.n_attn_dests + 2, graph.n_sources)


# Points that at layer 0 depend on their own token alone: they differ only where the tokens do.
LOCAL_AT_FIRST_LAYER = ("resid_pre", "q", "k", "v")


def position_fraction(forward: ForwardShape, task, setting, kinds, cfg) -> float:
    """Work of one counted pass of ``ap`` at positions ``setting`` on ``kinds`` of a model with
    config ``cfg`` (one patch of one unit at one position of one prompt), relative to a full
    forward, times the suffix passes' overhead: the mean over the kinds' (layer, unit) cells,
    the prompts and the setting's positions of the patch's suffix
    (:func:`attrscope.sites.ap_layer`). A patch at position ``p`` whose change enters the
    stream before ``b`` blocks runs them over ``p`` to the answer ``a`` (``a - p + 1``
    positions), the last one for the answer's query alone, and unembeds the answer. A position
    before the prompt's first clean/corrupted difference (at layer 0, for the embedding and the
    queries, keys and values made from it: wherever the tokens agree) has nothing to patch, and
    one after the answer reaches nothing: they cost nothing. So ``"each"`` grows with the
    square of the prompts' span, as its patches do. Not counted: a per-position head patch's
    MLP half-block and a query/key/value patch's attention recomputation (both at most one
    block)."""
    from .components import KINDS
    from .tasks.positions import select

    chosen = select(task, setting)
    if chosen == "all":
        return forward.fraction("patch_each_unit")
    L = forward.n_layers
    index, answer, differs, reached = chosen_positions(task, chosen)
    span = (answer + 1 - index).clamp(min=0).double()
    total, cells = 0.0, 0
    for name in kinds:
        kind = KINDS[name]
        for layer in range(kind.n_layers(L)):
            # blocks after the patch: from its own for the stream entering it, else the next
            blocks = L - layer if kind.point == "resid_pre" else L - layer - 1
            patched = reached
            if kind.point in LOCAL_AT_FIRST_LAYER and layer == 0:
                patched = reached & differs.gather(1, index.clamp(max=differs.shape[1] - 1))
            elif blocks < 0 or (kind.final_layer and layer == L):  # the final stream: its answer
                patched = reached & (index == answer)
            work = (max(blocks - 1, 0) * span + min(max(blocks, 0), 1)) * forward.block_flops \
                + forward.unembed_flops
            units = kind.n_units(cfg)
            total += units * float(torch.where(patched, work, 0.0).mean())
            cells += units
    full = forward.positions * (L * forward.block_flops + forward.unembed_flops)
    return SUFFIX_OVERHEAD * total / max(cells, 1) / full


def chosen_positions(task, chosen: dict):
    """For positions ``chosen`` (:func:`attrscope.tasks.positions.select`, not ``"all"``): each
    prompt's chosen token indices ``[n, k]``, its answer position ``[n, 1]``, where clean and
    corrupted tokens differ ``[n, pos]``, and which chosen positions a patch reaches ``[n, k]``
    (from the first difference to the answer)."""
    if "each" in chosen:
        index = torch.arange(chosen["each"]).repeat(task.n, 1)
    else:
        index = torch.stack([chosen[name].cpu().long() for name in chosen], dim=1)
    answer = task.answer_pos.cpu().long()[:, None]
    differs = (task.clean_tokens != task.corrupted_tokens).cpu()
    first = torch.where(differs.any(1), differs.float().argmax(1), answer[:, 0])[:, None]
    return index, answer, differs, (index >= first) & (index <= answer)


def exact_pass_ranges(n_edges: int, copies: int) -> list[range]:
    """The edges of each pass of ``exact``, which patches ``copies`` edges a pass, in edge
    order, never across a chunk of EXACT_CHUNK (:func:`attrscope.edges.methods.exact_scores`)."""
    from .arch.memory import EXACT_CHUNK

    return [range(start, min(start + copies, chunk + EXACT_CHUNK, n_edges))
            for chunk in range(0, n_edges, EXACT_CHUNK)
            for start in range(chunk, min(chunk + EXACT_CHUNK, n_edges), copies)]


def exact_pass_depths(graph, copies: int) -> list[tuple[int, int]]:
    """(edges, blocks) of each pass of ``exact`` (:func:`exact_pass_ranges`): a pass runs from
    the layer of its earliest destination on (none for the logits' input alone; edges are in
    destination order, so most passes start near their edges' own layers)."""
    layers = torch.div(graph.dest_index, graph.dests_per_layer, rounding_mode="floor")
    return [(len(edges), graph.n_layers - min(int(layers[edges.start:edges.stop].min()),
                                              graph.n_layers))
            for edges in exact_pass_ranges(graph.n_edges, copies)]


# What an exact edge pass costs relative to its FLOPs at the timed forward's speed: below 1, as
# its passes stack up to 1,024 rows. At 1.2, the passes were estimated at 1.86-2.09x their
# measured time on the embedded model (20 prompts) and 1.9x on the GPT-2-small shape (4
# prompts, every 16th pass timed); docs/performance.md, "Estimates".
EDGE_PATCH_OVERHEAD = 0.65


def edge_patch_fraction(model, task, settings: dict) -> float:
    """Work of one ``exact`` pass of one edge and prompt relative to a full forward: the blocks
    its pass runs (:func:`exact_pass_depths`) over the positions from the prompts'
    first clean/corrupted difference on (with ``positions``: from each chosen position,
    :func:`edge_position_work`), the answer unembedded (:func:`_exact_pass`)."""
    from .edges.graph import Graph
    from .engine import first_difference

    forward, setting = ForwardShape.of(model, task), settings.get("positions", "all")
    if setting == "all":
        share = (forward.positions - first_difference(task)) / forward.positions
    else:
        share = edge_position_work(task, setting)
    graph = Graph.of_model(model)
    # with positions, a pass stacks the prompts at one position: about as many copies a pass
    passes = exact_pass_depths(graph, exact_copies(model, task, settings))
    depth = sum(edges * blocks for edges, blocks in passes)
    full = forward.positions * (forward.n_layers * forward.block_flops + forward.unembed_flops)
    work = (share * forward.positions * depth / graph.n_edges * forward.block_flops
            + forward.unembed_flops)
    return EDGE_PATCH_OVERHEAD * work / full


def exact_copies(model, task, settings: dict) -> int:
    """Edges ``exact`` patches a pass: the rows its memory budget allows (at most
    EDGE_PATCH_MAX_ROWS) over the task's prompts."""
    from .engine import copies_per_pass, first_difference

    seq = int(task.clean_tokens.shape[1])
    rows = rows_per_pass(model, task, settings, edge=True, positions=seq - first_difference(task))
    return copies_per_pass(rows, task.n)


def edge_position_work(task, setting) -> float:
    """Work of ``exact``'s passes for one edge and prompt at positions ``setting``, relative to
    its one pass over every position: a pass per chosen position ``p`` from the first
    clean/corrupted difference to the answer ``a`` (elsewhere the score is exactly 0 and nothing
    runs), each over positions ``p`` to ``a`` of the prompt's ``a + 1``
    (:func:`attrscope.edges.methods.exact_position_scores`)."""
    from .tasks.positions import select

    chosen = select(task, setting)
    if chosen == "all":
        return 1.0
    index, answer, _, reached = chosen_positions(task, chosen)
    span = (answer + 1 - index).double() / (answer + 1).double()
    return float(torch.where(reached, span, 0.0).sum(1).mean())


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
            "(calibrated on a timed forward of these prompts on this model)")


# What an ablated set's pass costs relative to its FLOPs at the timed forward's speed: below 1,
# as its passes stack up to 51 copies of the batch. Measured on the GPT-2-small shape, 20
# prompts: 0.5-1.2 per set in single passes of 25 sets, 0.63 over a whole compare's verification.
ABLATION_OVERHEAD = 0.6


# How :class:`attrscope.analysis.ablation.Ablator` batches sets (tests/test_estimate.py checks
# these against it): sets are evaluated in blocks of ABLATOR_BLOCK, at most ABLATOR_ROWS rows a
# pass, fewer where the default memory budget allows fewer.
ABLATOR_BLOCK = 64
ABLATOR_ROWS = 1024


def ablation_seconds(model, task, n_sets: int, how: str, per_pass: float) -> float:
    """Seconds of ``n_sets`` ablated sets of :class:`attrscope.analysis.ablation.Ablator` on
    ``task``: one pass of every prompt each, through every block (random sets reach the first
    layers), over the positions from the clean/corrupted prompts' first difference on with
    ``how="other"`` (all positions otherwise), the answer unembedded only; ``per_pass`` as in
    :func:`estimate_seconds`. Where a pass has a fixed cost (:class:`ForwardTime`), it is paid
    once per batched pass of sets (:func:`ablation_passes`), not per set."""
    from .engine import first_difference

    timing = forward_time(per_pass)
    forward = ForwardShape.of(model, task)
    computed = forward.positions - (first_difference(task) if how == "other" else 0)
    full = forward.positions * (forward.n_layers * forward.block_flops + forward.unembed_flops)
    work = computed * forward.n_layers * forward.block_flops + forward.unembed_flops
    rows = ABLATION_OVERHEAD * n_sets * task.n * timing * work / full
    if not timing.fixed:
        return rows
    return rows + timing.fixed * ablation_passes(model, task, n_sets, computed)


def ablation_passes(model, task, n_sets: int, positions: int) -> int:
    """Batched passes of ``n_sets`` ablated sets over ``positions`` positions, as the Ablator
    stacks them: blocks of ABLATOR_BLOCK sets, each in passes of as many sets as ABLATOR_ROWS
    rows and the default memory budget allow."""
    rows = min(ABLATOR_ROWS, rows_per_pass(model, task, {}, positions=positions))
    per_pass = min(ABLATOR_BLOCK, max(1, rows // task.n))
    return -(-n_sets // per_pass)


# The largest batched pass of each cost function: whether it keeps a backward, whether it runs
# over every position (else from the first difference to the answer), and the rows it would
# stack if the budget allowed them all (per prompt; "units": one copy per unit of a layer).
LARGEST_PASS = {
    "run_source_and_backward": (True, True, lambda s: 1),
    "backward_per_dropped_layer": (True, True, lambda s: 1),
    "integrate_each_layer": (True, False, lambda s: int(s["n_steps"])),
    "integrate_inputs": (True, True, lambda s: int(s["n_steps"])),
    "integrate_each_stage": (True, True, lambda s: int(s["n_steps"])),
    "patch_each_unit": (False, False, "units"),
    "patch_each_edge": (False, True, "edges"),
}


def estimate_bytes(model, task, method: str, settings: dict, kinds, budget: int
                   ) -> dict[str, int]:
    """Estimated peak bytes of ``method`` on ``task`` beyond the model's weights, by part: the
    run's caches and scores (:func:`attrscope.engine.memory_plan`; an edge run's recorded
    source outputs and differences), a half-precision model's largest matrix cast to the compute
    dtype (else the adapter's q/k/v matrices side by side, if not made yet: :func:`fused_bytes`),
    and the larger of the unbatched forward and the largest batched pass, sized as the method sizes it (:mod:`attrscope.arch.memory`: the rows it
    stacks, at most what ``budget`` bytes allow). An estimate, not the ceiling each pass is
    sized to: small calls use far less than their budget."""
    from . import arch
    from .arch.memory import (EDGE_PATCH_MAX_ROWS, EXACT_CHUNK, PassShape, Widths, bytes_per_row,
                              rows_for_budget)
    from .components import KINDS
    from .edges.graph import Graph
    from .engine import first_difference, memory_plan
    from .registry import get_method

    spec = get_method(method)
    resolved = {**spec.defaults, **settings}
    cfg = config_of(model)
    n, seq = task.n, int(task.clean_tokens.shape[1])
    itemsize = torch.empty((), dtype=arch.compute_dtype(model)).element_size()
    edge = spec.granularity == "edge"
    plan = memory_plan(model, n, seq, [] if edge else [KINDS[k] for k in kinds])
    widths = Widths.of_config(cfg)
    cost = getattr(spec.passes, "__name__", "run_source_and_backward")
    if resolved.get("screen"):  # the screen's pass and then ap's: the larger counts
        cost = "patch_each_unit"
    backward, every_position, wanted = LARGEST_PASS.get(cost, (True, True, lambda s: 1))
    parts = {"caches": plan["caches"], "scores": plan["scores"]}
    if arch.compute_dtype(model) != arch.model_dtype(model):
        unembedding = int(cfg.d_model) * int(cfg.d_vocab) * itemsize
        # the float32 working copy (its unembedding: 1 GB at Llama-3.2-1B's shape) is made on a
        # process's first call and kept for the model (arch.adapter_for)
        parts["working_copy"] = 0 if arch.has_adapter(model) else unembedding
        if not edge:
            # measured: a node method's call on the Llama shape peaks 0.93 GiB above the kept
            # working copy, 0.13 GiB of it counted by the other parts; its run's forward
            # through the model holds about the unembedding's size again
            parts["cast"] = unembedding
    else:
        parts["fused"] = fused_bytes(model)
    if edge:
        graph = Graph.of_model(model)
        widths = edge_widths(widths, graph)
        # the run's and source's recorded outputs and their difference, the embeddings
        parts["caches"] = n * seq * (3 * graph.n_sources + 2) * cfg.d_model * itemsize
        parts["scores"] = n * graph.n_edges * 4
    span = int(ForwardShape.of(model, task).span + 0.5)
    if wanted == "edges":  # exact's passes: from the first difference on
        span, every_position = seq - first_difference(task), False
    shape = PassShape(seq if every_position else span, seq, cfg.n_layers, backward)
    if wanted == "units":
        per_prompt = max(kind.n_units(cfg) for kind in (KINDS[k] for k in kinds))
        if resolved.get("screen"):
            per_prompt = min(per_prompt, resolved["screen_top_k"] + resolved["screen_audit"])
    elif wanted == "edges":
        per_prompt = graph.n_edges
    else:
        per_prompt = wanted(resolved)
    rows = min(n * per_prompt, rows_for_budget(widths, shape, budget, itemsize))
    if wanted == "edges":  # exact's passes: at most a chunk of edges each
        rows = min(rows, EDGE_PATCH_MAX_ROWS, n * EXACT_CHUNK)
    largest = rows * bytes_per_row(widths, shape, itemsize)
    if cost in SUFFIX_COSTS and resolved.get("positions", "all") == "all":
        largest = grouped_pass_bytes(model, task, resolved, (widths, itemsize), per_prompt,
                                     PassShape(0, 0, cfg.n_layers, backward), budget)
    parts["passes"] = max(plan["forward"], largest)
    if cost == "backward_per_dropped_layer":
        parts["passes"] += graddrop_bytes(cfg, [KINDS[k] for k in kinds], resolved, rows, seq,
                                          itemsize)
    return parts


def grouped_pass_bytes(model, task, settings: dict, widths: tuple, per_prompt: int, depth: PassShape,
                       budget: int) -> int:
    """Bytes of the largest pass of ``ap`` or ``ig``, which take the samples in groups, each
    over its own positions (:func:`sample_spans`): per group, ``per_prompt`` copies (units of a
    layer, path steps) of its samples, as many as the budget allows for its positions, and for
    ``ap`` the same number in every group (:mod:`attrscope.methods.activation_patching`).
    ``widths``: the memory model's widths and the item size; ``depth``: the blocks and
    whether the pass has a backward."""
    from .arch.memory import bytes_per_row, rows_for_budget

    widths, itemsize = widths
    matched = settings.get("baseline", "matched") == "matched"
    shapes = [(size, replace(depth, positions=end - start, keys=end))
              for size, (start, end) in sample_spans(model, task, matched)]
    copies = [min(per_prompt, max(1, rows_for_budget(widths, shape, budget, itemsize) // size))
              for size, shape in shapes]
    if "n_steps" not in settings:  # ap: one number of units a pass for every group
        copies = [min(copies)] * len(copies)
    return max(c * size * bytes_per_row(widths, shape, itemsize)
               for (size, shape), c in zip(shapes, copies))


def fused_bytes(model) -> int:
    """Bytes of the q/k/v matrices side by side that the model's block adapter makes on first
    use and keeps (a model computed in its own dtype; a half-precision model's are made per
    pass, one layer at a time) for the layers not made yet: the first call of a process pays
    them (0.08 GiB on the GPT-2-small shape: 0.42 of that call's peak was estimated without)."""
    from . import arch

    try:
        adapter = arch.adapter_for(model)
    except arch.Unsupported:
        return 0
    width = (adapter.n_heads + 2 * adapter.n_kv_heads) * adapter.d_head
    itemsize = torch.empty((), dtype=adapter.dtype).element_size()
    return (adapter.n_layers - adapter.fused_layers) * width * (adapter.d_model + 1) * itemsize


def graddrop_bytes(cfg, kinds, settings: dict, rows: int, seq: int, itemsize: int) -> int:
    """What atpstar keeps beside its pass: the gradients of every held activation, one set per
    dropped layer and the undropped one (``graddrop``), for the ``rows`` prompts of a pass, and
    both prompts' queries, keys and values (keys and values repeated per query head) for the QK
    fix. Without them its estimate was 0.42 of the measured peak on the GPT-2-small shape."""
    L, H = int(cfg.n_layers), int(cfg.n_heads)
    E = int(getattr(cfg, "d_head", cfg.d_model // H))
    features = sum(H * E if k.branch == "attn" else int(cfg.d_mlp) for k in kinds)
    sets = L + 1 if settings.get("graddrop") else 1
    kept = sets * rows * seq * L * features
    if settings.get("qk_fix") and any(k.branch == "attn" for k in kinds):
        kept += 2 * 3 * rows * seq * L * H * E
    return kept * itemsize

