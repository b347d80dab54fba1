"""Edge-level attribution: ``eap`` (edge attribution patching) and ``exact`` edge patching.

Both score every edge ``u -> v`` of the :class:`~attrscope.edges.graph.Graph` in one direction
(``denoising``: run the corrupted prompt, source = clean; ``noising``: run clean, source =
corrupted), with the node methods' sign convention: a score is a change of the metric
(the task's: by default logit(answer) - logit(distractor)) of the run caused by giving ``v``'s
input ``u``'s source output.

- ``exact``: score = metric(run with ``delta_u`` added to ``v``'s input only) - metric(run), where
  ``delta_u`` = u's output in the source prompt minus in the run (summed over all positions);
  every other input reads the (recomputed) current residual stream. Many edges are patched per
  pass, one per stacked copy of the batch.
- ``eap-ig`` (inputs): EAP with the gradient integrated over ``alpha`` in [0, 1] while the input
  embeddings move from the run's to the source's (``embed = run + alpha (source - run)``), times
  the same ``delta_u``. O(steps) forwards and backwards.
- ``eap-ig-act`` (activations): for each destination stage (layer l's q/k/v inputs, MLP l's
  input, the logits) separately, that stage's inputs move from the run's to the source's values
  (``input = run + alpha (source - run)``, everything upstream the run's) and the gradient at
  each input of the stage is integrated, times ``delta_u``. O(steps x layers) passes. Summed over
  all edges into a stage, the scores equal exact patching of all those edges at once
  (completeness, up to the quadrature error).
  That is ``definition="complete"`` (the default). ``definition="eap-ig"`` is the EAP-IG
  library's ``EAP-IG-activations`` instead: one pass per sublayer N (the input, one attention
  layer's heads together, or one MLP) and step ``k = 1..steps``, in which N's output is the
  constant ``run_N + (1 - k/steps)(source_N - run_N)`` (no gradient flows back through N, the
  rest downstream is recomputed). Every pass gives every destination's gradient, also upstream
  of N, and ``delta_u`` times their mean over all ``(2 n_layers + 1) steps`` passes is the score.
  Same sign; not complete, and not EAP at first order except into the logits
  (docs/edges.md, "eap-ig-act: two definitions").

``eap-ig`` and the complete ``eap-ig-act`` use Gauss-Legendre quadrature with ``steps`` nodes
(as the node method ``ig``).
- ``eap``: its first-order estimate, ``sum over positions of delta_u . d metric / d input_v``
  with the gradient taken in the unpatched run; equal to ``exact`` where the metric is linear in
  ``v``'s input. Costs 2 forwards and 1 backward for all edges (plus two bridge forwards that
  read the embeddings and check the edge forward against the model's own metric).

See :mod:`attrscope.edges.forward` for where the inputs are taken (before each layer norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from .. import arch, estimate
from ..checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from ..arch.memory import EDGE_PATCH_MAX_ROWS, EXACT_CHUNK, PassShape, Widths, rows_for_budget
from ..engine import (Runner, check_direction, chunks, first_difference, mismatch,
                      progress_bar)
from ..registry import register
from ..quadrature import gauss_legendre
from ..scores import EDGES, Scores
from ..tasks.base import Task
from ..arch.forward import Plan, Start
from ..sites import Positions, resolve_positions
from ..tasks.positions import POSITIONS_HELP
from .forward import AddToInputs, Additions, EdgeForward, Freeze, SlotAdditions
from .graph import Graph



def check_reproduces(metric: torch.Tensor, model_metric: torch.Tensor, dtype: torch.dtype,
                     compute: torch.dtype | None = None) -> None:
    """Refuse an edge forward (computing in ``compute``) whose metric ``[n]`` differs from the
    ``dtype`` model's own beyond the tolerance of ``dtype`` (the one self-check,
    :func:`attrscope.engine.mismatch`): edge methods have no fallback."""
    if not torch.isfinite(model_metric).all():
        raise ValueError("the model's metric is NaN or infinite on this task's prompts: its "
                         "outputs are not finite (NaN/Inf weights, or an overflow in this dtype); "
                         "check the model's weights or use --dtype float32.")
    bad = mismatch({"metric": (metric.float(), model_metric.float())}, dtype)
    if bad is not None:
        how = f" computing in {str(compute).removeprefix('torch.')}" if compute not in (None, dtype) else ""
        name = str(dtype).removeprefix("torch.")
        raise RuntimeError(
            f"The edge forward{how} does not reproduce the {name} model's {bad}; edge methods "
            "cannot be trusted on this model. Load it in float32 (--dtype float32) or report "
            "the model.")


@dataclass
class EdgeRun:
    """Everything an edge method needs for one task in one direction.

    run_embed / source_embed: ``[n, P, d]``; metric_run / metric_source: ``[n]`` from the edge
    forward (checked against the bridge); delta: ``[n, P, n_sources, d]`` source - run outputs.
    """

    forward: EdgeForward
    task: Task
    direction: str
    run_embed: torch.Tensor
    source_embed: torch.Tensor
    metric_run: torch.Tensor
    metric_source: torch.Tensor
    delta: torch.Tensor
    _streams: dict[str, list[torch.Tensor]] | None = None
    _run_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    # Where the running method keeps finished chunks; attrscope.attribute sets it for one call.
    checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT

    def stream(self, which: str, stage: int) -> torch.Tensor:
        """``[n, P, d]`` the residual stream of the ``"run"`` or ``"source"`` prompt read at
        ``stage``: 2l entering layer l's attention, 2l + 1 its MLP, 2 n_layers the final one."""
        if self._streams is None:
            rows = torch.arange(self.n, device=self.run_embed.device)
            with torch.no_grad():
                run, caches = self.forward.streams(self.run_embed, *self.answer_args(rows))
                source, _ = self.forward.streams(self.source_embed, *self.answer_args(rows))
            self._streams = {"run": run, "source": source}
            self._run_kv = [(c["k"], c["v"]) for c in caches]
        return self._streams[which][stage]

    def run_prefix(self, rows: torch.Tensor, start: int):
        """``prefix(layer)``: the run's (keys, values) ``[len(rows), n_kv_heads, start, d_head]``
        (a :class:`~attrscope.arch.forward.Plan`'s prefix)."""
        self.stream("run", 0)
        return lambda layer: (self._run_kv[layer][0][rows, :, :start],
                              self._run_kv[layer][1][rows, :, :start])

    def resid_entering(self, layer: int) -> torch.Tensor:
        """``[n, P, d]`` the run's residual stream entering ``layer`` (``n_layers``: final)."""
        return self.stream("run", 2 * layer)

    @property
    def graph(self) -> Graph:
        return self.forward.graph

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the edge forward computes in (float32 for a half-precision model)."""
        return self.run_embed.dtype

    @property
    def n(self) -> int:
        return self.task.n

    def answer_args(self, rows: torch.Tensor):
        t = self.task
        return t.answer_pos[rows], t.readout(rows)

    @classmethod
    def prepare(cls, model, task: Task, direction: str) -> "EdgeRun":
        check_direction(direction)
        forward = EdgeForward(model)
        runner = Runner(model, task, direction, [], allow_fast=False)
        rows = torch.arange(task.n, device=task.clean_tokens.device)
        embeds, outputs, metrics = [], [], []
        with torch.no_grad():
            for tokens in (runner.run_tokens, runner.source_tokens):
                model_metric, _ = runner.capture(tokens, [])
                embed = arch.embedding(model, tokens, forward.w)
                metric, out = forward.outputs(embed, *cls._args(task, rows))
                check_reproduces(metric, model_metric, arch.model_dtype(model), embed.dtype)
                embeds.append(embed)
                outputs.append(out)
                metrics.append(metric)
        return cls(forward, task, direction, embeds[0], embeds[1], metrics[0], metrics[1],
                   outputs[1] - outputs[0])

    @staticmethod
    def _args(task: Task, rows: torch.Tensor):
        return task.answer_pos[rows], task.readout(rows)


def _dense(er: EdgeRun, positions: Positions | None) -> torch.Tensor:
    """The accumulator of dense edge values: ``[n, n_dests, n_sources]``, with ``positions``
    ``[n, n_pos, n_dests, n_sources]``."""
    graph = er.graph
    shape = (er.n,) + (() if positions is None else (positions.n_pos,))
    return torch.zeros(*shape, graph.n_dests, graph.n_sources, dtype=torch.float64)


def _contract(delta: torch.Tensor, grads: torch.Tensor, rows: torch.Tensor,
              positions: Positions | None) -> torch.Tensor:
    """``delta`` ``[r, P, n_sources, d]`` . ``grads`` ``[r, P, n_dests, d]``: summed over positions
    ``[r, n_dests, n_sources]``, or at each row's ``positions`` ``[r, n_pos, n_dests, n_sources]``
    (a source's output at p into a destination's input at p)."""
    if positions is None:
        return torch.einsum("rpsd,rpvd->rvs", delta, grads)
    every = torch.einsum("rpsd,rpvd->rpvs", delta, grads)
    index = positions.index[rows.cpu()].to(every.device)
    return every.gather(1, index[:, :, None, None].expand(-1, -1, *every.shape[2:]))


def _edge_values(graph: Graph, dense: torch.Tensor, positions: Positions | None) -> torch.Tensor:
    """``[n, n_edges]``, or with positions ``[n, n_edges, n_pos]``."""
    edges = graph.gather(dense).float()
    return edges if positions is None else edges.transpose(1, 2)


def eap_scores(er: EdgeRun, max_batch_rows: int = 64, show_progress: bool = False,
               steps: int | None = None, positions: Positions | None = None) -> torch.Tensor:
    """``[n, n_edges]`` EAP scores, or with ``steps`` EAP-IG (inputs) scores (see the module
    docstring). ``max_batch_rows`` bounds the rows (samples x interpolation steps) per pass.
    With ``positions`` (:func:`attrscope.sites.resolve_positions`), ``[n, n_edges, n_pos]``: the
    terms of the sum over positions, each at its own position."""
    graph, ef, n = er.graph, er.forward, er.n
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    alphas, weights = (None, torch.ones(1)) if steps is None else gauss_legendre(int(steps))
    n_alpha = len(weights)
    # (sample, alpha) pairs, sample-major, chunked into passes of at most max_batch_rows rows.
    pairs = torch.arange(n * n_alpha)
    grads_sum = _dense(er, positions)
    batches = list(chunks(pairs, max(1, int(max_batch_rows))))
    desc = f"{'eap' if alphas is None else 'eap-ig'} {er.direction}"
    with progress_bar(len(batches), desc, show_progress) as bar:
        for batch in batches:
            rows = (batch // n_alpha).to(er.run_embed.device)
            embed = er.run_embed[rows]
            if alphas is not None:
                alpha = alphas[batch % n_alpha].to(embed)[:, None, None]
                embed = embed + alpha * (er.source_embed[rows] - embed)
            _, probes = ef.probed(embed, *er.answer_args(rows))
            grads = ef.dense_grads(probes)  # [r, P, n_dests, d]
            dense = _contract(er.delta[rows], grads, rows, positions).double().cpu()
            w = weights[batch % n_alpha].view(-1, *([1] * (dense.dim() - 1)))
            grads_sum.index_add_(0, rows.cpu(), dense * w)
            bar.update(1)
    return _edge_values(graph, grads_sum, positions)


def eap_ig_activations_scores(er: EdgeRun, steps: int = 20, max_batch_rows: int = 64,
                              show_progress: bool = False, positions: Positions | None = None
                              ) -> torch.Tensor:
    """``[n, n_edges]`` EAP-IG (activations) scores (see the module docstring); with
    ``positions``, ``[n, n_edges, n_pos]``."""
    graph, ef, n = er.graph, er.forward, er.n
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    alphas, weights = gauss_legendre(int(steps))
    L, A, per = graph.n_layers, graph.n_attn_dests, graph.dests_per_layer
    dense = _dense(er, positions)
    batches = list(chunks(torch.arange(n * len(alphas)), max(1, int(max_batch_rows))))
    with progress_bar((2 * L + 1) * len(batches), f"eap-ig-act {er.direction}",
                      show_progress) as bar:
        for stage in range(2 * L + 1):
            layer = stage // 2
            moved = er.stream("source", stage) - er.stream("run", stage)  # [n, P, d]
            for batch in batches:
                rows = (batch // len(alphas)).to(er.run_embed.device)
                step = (alphas[batch % len(alphas)].to(moved)[:, None, None] * moved[rows])
                add = Additions.none(L)
                if stage == 2 * L:
                    add.logits, dests = step, slice(graph.logits_dest, graph.logits_dest + 1)
                elif stage % 2 == 0:
                    add.attn[layer] = step[:, :, None].expand(-1, -1, A, -1)
                    dests = slice(layer * per, layer * per + A)
                else:
                    add.mlp[layer] = step
                    dests = slice(layer * per + A, layer * per + A + 1)
                _, probes = ef.probed(er.resid_entering(layer)[rows], *er.answer_args(rows),
                                      Plan(Start(layer), [AddToInputs(add)]))
                if stage == 2 * L:
                    grads = probes.logits.grad[:, :, None]
                elif stage % 2 == 0:
                    grads = probes.attn[layer].grad  # [r, P, A, d]
                else:
                    grads = probes.mlp[layer].grad[:, :, None]
                part = _contract(er.delta[rows], grads, rows, positions).double().cpu()
                w = weights[batch % len(alphas)].view(-1, *([1] * (part.dim() - 1)))
                target = dense[:, dests] if positions is None else dense[:, :, dests]
                target.index_add_(0, rows.cpu(), part * w)
                bar.update(1)
    return _edge_values(graph, dense, positions)


# EAP-IG's sublayers for EAP-IG-activations, in forward order: what one pass interpolates.
def _sublayers(n_layers: int) -> list[tuple[str, int]]:
    return [("input", 0)] + [(branch, layer) for layer in range(n_layers) for branch in ("attn", "mlp")]


def _sublayer_delta(er: EdgeRun, branch: str, layer: int) -> torch.Tensor:
    """``[n, P, d]`` source - run output of one sublayer: the input node, all heads of
    ``layer``'s attention together, or its MLP."""
    graph = er.graph
    if branch == "input":
        return er.source_embed - er.run_embed
    if branch == "attn":
        first = graph.head_source(layer, 0)
        return er.delta[:, :, first:first + graph.n_heads].sum(2)
    return er.delta[:, :, graph.mlp_source(layer)]


def eap_ig_sublayer_scores(er: EdgeRun, steps: int = 20, max_batch_rows: int = 64,
                           show_progress: bool = False, positions: Positions | None = None
                           ) -> torch.Tensor:
    """``[n, n_edges]`` EAP-IG (activations) as the EAP-IG library defines it (Hanna et al.,
    ``EAP-IG-activations``; see the module docstring and ``docs/edges.md``).

    One pass per sublayer ``N`` (the input, each layer's attention, each MLP) and step
    ``k = 1..steps``: the run's forward with ``N``'s output replaced by the constant
    ``run_N + (1 - k/steps) (source_N - run_N)`` (so the run itself at ``k = steps``, never the
    source), everything downstream recomputed and no gradient through ``N``. Every pass adds,
    for every edge ``u -> v``, ``delta_u . d metric / d input_v`` summed over positions; the
    total is divided by the ``(2 n_layers + 1) steps`` passes. ``max_batch_rows`` bounds the
    rows (samples x steps) per pass.
    """
    graph, ef, n = er.graph, er.forward, er.n
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    steps = int(steps)
    towards_source = 1 - torch.arange(1, steps + 1, dtype=torch.float64) / steps
    sublayers = _sublayers(graph.n_layers)
    grads_sum = _dense(er, positions)
    batches = list(chunks(torch.arange(n * steps), max(1, int(max_batch_rows))))
    with progress_bar(len(sublayers) * len(batches), f"eap-ig-act (eap-ig) {er.direction}",
                      show_progress) as bar:
        for branch, layer in sublayers:
            moved = _sublayer_delta(er, branch, layer)  # [n, P, d]
            for batch in batches:
                rows = (batch // steps).to(er.run_embed.device)
                shift = towards_source[batch % steps].to(moved)[:, None, None] * moved[rows]
                embed, edits = er.run_embed[rows], []
                if branch == "input":
                    embed = embed + shift
                else:
                    edits = [Freeze(branch, layer, shift)]
                _, probes = ef.probed(embed, *er.answer_args(rows), Plan(edits=edits))
                # The frozen sublayer's own inputs reach no output: their gradient is zero.
                for probe in probes.attn + probes.mlp:
                    if probe.grad is None:
                        probe.grad = torch.zeros_like(probe)
                grads = ef.dense_grads(probes)  # [r, P, n_dests, d]
                dense = _contract(er.delta[rows], grads, rows, positions).double().cpu()
                grads_sum.index_add_(0, rows.cpu(), dense)
                bar.update(1)
    return _edge_values(graph, grads_sum / (len(sublayers) * steps), positions)


def exact_scores(er: EdgeRun, edge_sets: Sequence[Iterable[int]] | None = None,
                 max_batch_rows: int = 64, show_progress: bool = False,
                 checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT) -> torch.Tensor:
    """``[n, len(edge_sets)]``: metric change when every edge of a set is patched at once (each
    edge's ``delta_u`` added to its destination input); default: every edge on its own, giving
    ``[n, n_edges]``. Sets are run ``max_batch_rows // n`` per pass, stacked along the batch;
    every :data:`EXACT_CHUNK` sets are one chunk of ``checkpoint``."""
    graph, n = er.graph, er.n
    if edge_sets is None:
        edge_sets = [[e] for e in range(graph.n_edges)]
    edge_sets = [list(s) for s in edge_sets]
    for i, s in enumerate(edge_sets):
        bad = [e for e in s if not 0 <= e < graph.n_edges]
        if bad:
            raise ValueError(f"Edge set {i} has edge indices {bad} outside 0..{graph.n_edges - 1}.")
    copies = max(1, int(max_batch_rows) // max(1, n))
    blocks = list(chunks(range(len(edge_sets)), EXACT_CHUNK))
    passes = [-(-len(block) // copies) for block in blocks]

    def run_block(block: range) -> dict[str, torch.Tensor]:
        """``{"delta": [n, len(block)]}``."""
        done = []
        for batch in chunks(block, copies):
            done.append(_exact_pass(er, [edge_sets[i] for i in batch]))
            bar.update(1)
        return {"delta": torch.cat(done, dim=1)}

    with progress_bar(sum(passes), f"exact edges {er.direction}", show_progress) as bar, \
            torch.no_grad():
        parts = [checkpoint.chunk(f"sets{block.start}-{block.stop}", lambda: run_block(block),
                                  on_reuse=lambda: bar.update(k))["delta"]
                 for block, k in zip(blocks, passes)]
    return torch.cat(parts, dim=1) if parts else torch.empty(n, 0)


def exact_position_scores(er: EdgeRun, positions: Positions, max_batch_rows: int = 64,
                          show_progress: bool = False,
                          checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT) -> torch.Tensor:
    """``[n, n_edges, n_pos]``: each edge patched at one position (its source's output at p
    added to its destination's input at p), each prompt at its own position of each entry of
    ``positions``. A pass starts at the first patched layer and at p, with the run's earlier
    keys and values; where the source's output does not change at p (before the first
    clean/corrupted difference) or p is after the answer, the score is exactly 0 without a
    pass. Every position entry is one chunk of ``checkpoint``."""
    graph, n = er.graph, er.n
    answer = er.task.answer_pos.cpu()
    work = []  # per position entry: (p, samples, edges whose source changes at p)
    for j in range(positions.n_pos):
        at, groups = positions.index[:, j], []
        for p in torch.unique(at).tolist():
            samples = torch.nonzero((at == p) & (answer >= p)).flatten()
            if not len(samples):
                continue
            moved = er.delta[samples.to(er.delta.device), p].abs().amax(dim=(0, 2)) > 0
            edges = torch.nonzero(moved.cpu()[graph.source_index]).flatten().tolist()
            if edges:
                groups.append((p, samples, edges, max(1, int(max_batch_rows) // len(samples))))
        work.append(groups)
    total = sum(-(-len(edges) // copies) for groups in work for _, _, edges, copies in groups)

    def one_entry(groups) -> dict[str, torch.Tensor]:
        """``{"delta": [n, n_edges]}`` of one position entry."""
        values = torch.zeros(n, graph.n_edges)
        for p, samples, edges, copies in groups:
            for batch in chunks(edges, copies):
                got = _exact_pass(er, [[e] for e in batch], samples.to(er.delta.device), p)
                values[samples[:, None], torch.tensor(batch)[None, :]] = got
                bar.update(1)
        return {"delta": values}

    with progress_bar(total, f"exact edges by position {er.direction}", show_progress) as bar, \
            torch.no_grad():
        parts = [checkpoint.chunk(f"position{j}", lambda: one_entry(groups),
                                  on_reuse=lambda: bar.update(
                                      sum(-(-len(e) // c) for _, _, e, c in groups)))["delta"]
                 for j, groups in enumerate(work)]
    return torch.stack(parts, dim=-1)


def _exact_pass(er: EdgeRun, sets: list[list[int]], samples: torch.Tensor | None = None,
                at: int | None = None) -> torch.Tensor:
    """``[n, len(sets)]``: one pass with the ``len(sets)`` patched copies of the batch stacked
    (or of ``samples``, ``[g, len(sets)]``); with ``at``, each edge patched at absolute position
    ``at`` only, the pass starting there."""
    graph, c = er.graph, len(sets)
    n = er.n if samples is None else len(samples)
    # Positions before the first clean/corrupted difference are identical in both prompts, so
    # every delta is zero there and patched runs recompute only the later positions.
    start = first_difference(er.task) if at is None else at
    P, d = er.delta.shape[1] - start, er.delta.shape[3]
    deltas = er.delta if samples is None else er.delta[samples]
    if at is not None:  # the source's output changes at ``at`` only
        deltas = torch.zeros_like(deltas)
        deltas[:, at] = er.delta[samples, at]
    A, per = graph.n_attn_dests, graph.dests_per_layer
    add = Additions.none(graph.n_layers)
    # per attention layer and slot, per set: the summed deltas into that slot
    slots: dict[int, dict[int, dict[int, torch.Tensor]]] = {}
    first = graph.n_layers
    for i, edge_set in enumerate(sets):
        block = slice(i * n, (i + 1) * n)
        for e in edge_set:
            dest, source = int(graph.dest_index[e]), int(graph.source_index[e])
            delta = deltas[:, start:, source]
            layer, slot = divmod(dest, per)
            first = min(first, layer)
            if dest == graph.logits_dest:
                if add.logits is None:
                    add.logits = delta.new_zeros(c * n, P, d)
                add.logits[block] += delta
            elif slot == A:
                if add.mlp[layer] is None:
                    add.mlp[layer] = delta.new_zeros(c * n, P, d)
                add.mlp[layer][block] += delta
            else:
                into = slots.setdefault(layer, {}).setdefault(slot, {})
                into[i] = into[i] + delta if i in into else delta
    for layer, by_slot in slots.items():
        add.attn[layer] = _slot_additions(by_slot, n, deltas.device)
    if samples is None:
        rows = torch.arange(n, device=er.run_embed.device).repeat(c)
        base = er.metric_run
    else:
        rows, base = samples.repeat(c), er.metric_run[samples]
    # Everything before the first patched layer is the run's: start there.
    metric = er.forward.patched(er.resid_entering(first)[rows, start:], *er.answer_args(rows),
                                add, Start(first, "pre", start), er.run_prefix(rows, start))
    return (metric.view(c, n) - base).T.float().cpu()


def _slot_additions(by_slot: dict[int, dict[int, torch.Tensor]], n: int, device
                    ) -> SlotAdditions:
    """One layer's :class:`SlotAdditions` from ``{slot: {set i: delta [n, P, d]}}``, set i's
    copy of the batch being rows ``i n .. (i + 1) n - 1``."""
    groups = []
    for slot, by_set in sorted(by_slot.items()):
        rows = torch.cat([torch.arange(i * n, (i + 1) * n, device=device) for i in by_set])
        groups.append((slot, rows, torch.cat(list(by_set.values()))))
    return SlotAdditions(groups)


def edge_rows_per_pass(er: "EdgeRun", settings: dict, backward: bool) -> int:
    """Rows per edge-forward pass: ``max_batch_rows`` when given, else what ``max_memory``
    bytes allow by the one memory model (:mod:`attrscope.arch.memory`) with the edge forward's
    widths (its per-destination input copies and recorded outputs)."""
    if settings.get("max_batch_rows") is not None:
        return max(1, int(settings["max_batch_rows"]))
    positions = int(er.run_embed.shape[1])
    # an exact pass computes the positions from the first clean/corrupted difference on
    computed = positions if backward else positions - first_difference(er.task)
    shape = PassShape(computed, positions, er.graph.n_layers, backward)
    rows = rows_for_budget(Widths.of_adapter(er.forward.w, er.graph), shape,
                           settings["max_memory"], er.run_embed.element_size())
    return rows if backward else min(rows, EDGE_PATCH_MAX_ROWS)


EDGE_HELP = {"n_steps": "integration steps: Gauss-Legendre nodes, or with --definition eap-ig "
                         "EAP-IG's k/n_steps for k = 1..n_steps (formerly 'steps')",
             "positions": POSITIONS_HELP + "; an edge at p: its source's output at p into its "
                          "destination's input at p"}
EDGE_SIGN = "metric(run with the edge patched) - metric(run)"


@register("eap", granularity="edge", sign=EDGE_SIGN + " (gradient estimate)",
          passes=estimate.run_source_and_backward,
          summary="edge attribution patching: gradient at the run's destination input x (source "
                  "- run output of the source node), all edges from 2 forwards + 1 backward",
          help=EDGE_HELP, positions="all", max_memory=None, max_batch_rows=None)
def _eap(er: "EdgeRun", kinds, settings: dict, show_progress: bool):
    rows = edge_rows_per_pass(er, settings, backward=True)
    positions = resolve_positions(er.task, settings["positions"])
    return {EDGES: eap_scores(er, rows, show_progress, positions=positions)}, {}


@register("eap-ig", granularity="edge", sign=EDGE_SIGN + " (gradient estimate)", help=EDGE_HELP,
          passes=estimate.integrate_inputs,
          summary="EAP-IG (inputs): EAP with the gradient averaged over `n_steps` interpolations "
                  "of the input embeddings from the run's to the source's",
          n_steps=20, positions="all", max_memory=None, max_batch_rows=None)
def _eap_ig(er: "EdgeRun", kinds, settings: dict, show_progress: bool):
    rows = edge_rows_per_pass(er, settings, backward=True)
    positions = resolve_positions(er.task, settings["positions"])
    return {EDGES: eap_scores(er, rows, show_progress, steps=settings["n_steps"],
                              positions=positions)}, {}


EAP_IG_ACT_DEFINITIONS = {"complete": eap_ig_activations_scores, "eap-ig": eap_ig_sublayer_scores}


@register("eap-ig-act", granularity="edge", sign=EDGE_SIGN + " (gradient estimate)",
          passes=estimate.integrate_each_stage,
          help={**EDGE_HELP,
                "definition": "complete (default: per destination stage, its inputs "
                              "interpolated; sums to exact patching of the stage) or eap-ig (the "
                              "EAP-IG library's: one sublayer's output interpolated per pass, "
                              "k/n_steps for k = 1..n_steps, not complete)"},
          summary="EAP-IG (activations): per destination stage, its inputs interpolated from the "
                  "run's to the source's values, gradient integrated over `n_steps`; "
                  "definition=eap-ig gives the EAP-IG library's scores",
          n_steps=20, definition="complete", positions="all", max_memory=None,
          max_batch_rows=None)
def _eap_ig_act(er: "EdgeRun", kinds, settings: dict, show_progress: bool):
    scores = EAP_IG_ACT_DEFINITIONS.get(settings["definition"])
    if scores is None:
        raise ValueError(f"definition must be one of {sorted(EAP_IG_ACT_DEFINITIONS)}, got "
                         f"{settings['definition']!r}.")
    rows = edge_rows_per_pass(er, settings, backward=True)
    positions = resolve_positions(er.task, settings["positions"])
    values = scores(er, settings["n_steps"], rows, show_progress, positions)
    return {EDGES: values}, {}


@register("exact", granularity="edge", sign=EDGE_SIGN, passes=estimate.patch_each_edge,
          summary="exact edge patching: one edge's source-minus-run output added to one "
                  "destination input, the rest recomputed; many edges per pass",
          help=EDGE_HELP, positions="all", max_memory=None, max_batch_rows=None)
def _exact(er: "EdgeRun", kinds, settings: dict, show_progress: bool):
    rows = edge_rows_per_pass(er, settings, backward=False)
    positions = resolve_positions(er.task, settings["positions"])
    if positions is not None:
        return {EDGES: exact_position_scores(er, positions, rows, show_progress,
                                             er.checkpoint)}, {}
    return {EDGES: exact_scores(er, None, rows, show_progress, er.checkpoint)}, {}
