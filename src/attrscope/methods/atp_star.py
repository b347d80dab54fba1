"""``atpstar``: AtP* (Kramár et al. 2024), attribution patching with the QK fix and GradDrop.

Nodes are the same as every other method's: a head is its ``hook_z`` output (all positions), a
neuron its ``mlp.hook_post``. Notation for one head of one sample: ``A`` the run's attention
pattern ``[query t, key s]``, ``q, k, v`` the run's queries, keys and values, ``q', k', v'`` the
source prompt's, ``g = d metric / d z`` at the run, and ``G[t, s] = g_t . v_s`` the gradient of the
metric with respect to the pattern (``z_t = sum_s A[t, s] v_s``, so this is exact, not estimated).

**Plain AtP** (the ``atp`` method) scores a head by ``g . (z' - z)``. Since
``z' - z = A' v' - A v``, that score is *exactly* (tested)::

    atp(head) = g . (A' (v' - v))  +  sum_{t,s} (A' - A)[t, s] G[t, s]

i.e. on a whole-head patch AtP already uses the exact source pattern ``A'`` (queries and keys
patched *together*); it linearises only downstream of ``z``.

**QK fix** (``qk_fix=True``). AtP* splits a head's effect into the paths through its values,
queries and keys, each with the other two held at the run's, and computes the attention pattern
exactly for the query and key patches instead of linearising through the softmax; only the
effect of the pattern on the metric is linearised::

    value(head) = g . (A (v' - v))                                   (ordinary AtP through v)
    query(head) = sum_{t,s} (softmax_s(q'_t . k_s / c) - A)[t, s] G[t, s]
    key(head)   = sum_{t,s} (softmax_s(q_t . k'_s / c) - A)[t, s] G[t, s]

with ``1 / c`` the model's attention scale and the run's mask. The queries, keys and values are
the model's block adapter's (:mod:`attrscope.arch`): after rotary embeddings and query/key norms,
with each query head reading its key/value head under grouped-query attention, and the scores
soft-capped and windowed as the model does; the method checks first that ``softmax(scores) v``
reproduces the model's ``hook_z`` and refuses a layer where it does not. Under grouped-query
attention a head's key path patches the keys of its key/value head as that head reads them
(its group's other heads are other nodes). The paper patches one query or key
position at a time and sums; here a head node is every position of the head, so all its queries
(each query row is independent) or all its keys are patched at once. The three terms are returned
as extras ``qk.value.heads``, ``qk.query.heads``, ``qk.key.heads`` ``[n, n_layers, n_heads]``;
how a head's score uses them is ``head_score`` (below). With ``qk_fix=False`` no terms are
computed. Neurons have no attention: their AtP* is AtP (with GradDrop).

**GradDrop** (``graddrop=True``). For each layer ``l`` the gradient is recomputed with the
gradient through block ``l``'s residual-stream contribution (its ``hook_attn_out`` and
``hook_mlp_out``) set to zero, the skip connection kept; every estimate above is recomputed with
that gradient, giving ``c_l(node)``, and the paper's combination is::

    |score| = 1 / (L - 1) * sum_{l=0}^{L-1} |c_l(node)|

(for a node in layer ``m``: ``c_l`` equals the undropped estimate for ``l < m`` and is 0 for
``l = m``, so this averages over the ``L - 1`` informative terms; ``L - 1`` is taken as 1 when
``L = 1``). Taking absolute values per dropped layer means paths that cancel in the full gradient
no longer hide a node (the paper's remedy for false negatives). The paper's score is a magnitude;
to keep the sign convention of ``ap``/``atp`` we give it the sign of the undropped AtP* estimate
(our choice, not the paper's): ``score = sign(c) * |score|``. Cost: one forward with gradients and
``L + 1`` backwards of it (one graph: the full gradient less, per block, the gradient along the
paths through that block's attention and MLP outputs, :func:`gradients_by_dropped_block`), plus the source run and one
source forward for ``q, k, v``; the attention check is made on every layer of every pass.

**Head score** (``head_score``). A head node here is its whole output, so the patch it stands
for moves its queries, keys and values *together*. ``"joint"`` (the default) scores exactly that
patch with the QK fix's recipe - the pattern recomputed exactly, only its effect on the metric
linearised - which is the identity above: ``g . (z' - z)``, the ``atp`` head score (GradDrop then
applies to it). ``"paths"`` scores ``value + query + key``, each path patched alone: it drops the
interaction of the query and key patches and was measured farther from ``ap`` on whole heads
(README, "AtP*"). The per-path terms are kept as extras either way (with ``qk_fix``): they are the
QK-fixed estimates of query-only and key-only patches, where the fix is measured closer to exact
patching than linearising through the softmax.

The per-path split of the QK fix and the ``1 / (L - 1)`` combination of GradDrop follow the paper
as recalled when this was written; its text could not be consulted offline, so check them against
it.

Sign: as ``ap`` (estimate of it). With ``graddrop=True`` the magnitude is the GradDrop magnitude,
an estimate meant for ranking by ``|score|``, not for summing.
"""

from __future__ import annotations

import torch

from .. import arch
from ..arch.forward import BRANCH_POINT, Hold
from ..components import ComponentKind, sum_per_unit
from ..engine import Runner, mismatch
from ..estimate import backward_per_dropped_layer
from ..registry import register


def pattern_gradient(grad_z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """d metric / d pattern through ``z = pattern @ v``.

    grad_z, v: ``[b, pos, heads, d_head]`` -> ``[b, heads, query pos, key pos]``.
    """
    return torch.einsum("bthe,bshe->bhts", grad_z, v)


def value_term(grad_z: torch.Tensor, pattern: torch.Tensor, delta_v: torch.Tensor) -> torch.Tensor:
    """``g . (A (v' - v))`` per head: grad_z, delta_v ``[b, pos, heads, d_head]``, pattern
    ``[b, heads, t, s]`` -> ``[b, heads]``."""
    return torch.einsum("bthe,bhts,bshe->bh", grad_z, pattern, delta_v)


def pattern_term(new_pattern: torch.Tensor, pattern: torch.Tensor, grad_pattern: torch.Tensor
                 ) -> torch.Tensor:
    """``sum_{t,s} (A_new - A) G`` per head: all ``[b, heads, t, s]`` -> ``[b, heads]``."""
    return ((new_pattern - pattern) * grad_pattern).sum(dim=(2, 3))


def gradients_by_dropped_block(metric: torch.Tensor, inputs: list[torch.Tensor],
                               blocks: list[tuple[torch.Tensor, torch.Tensor]]
                               ) -> list[list[torch.Tensor]]:
    """d metric.sum() / d ``inputs``: undropped, then for each block l of ``blocks`` = (what its
    attention adds to the stream, what its MLP adds) with both of them dropped (the gradient
    through them zero, the skip connection kept).

    Every path from an input to the metric that passes block l passes its attention output A or
    its MLP output M, so the dropped gradient is the full one minus the gradient along those
    paths: ``u_M = dm/dM`` back through M, plus ``dm/dA`` less what of it runs on through M
    (``u_M`` back from M to A) back through A. One backward of the whole graph, then two short
    ones per block (from block l down), nothing switched between backwards."""
    outs = [t for pair in blocks for t in pair]
    grads = torch.autograd.grad(metric.sum(), inputs + outs, retain_graph=True, allow_unused=True)
    full = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads[:len(inputs)])]
    result = [full]
    for l, (attn, mlp) in enumerate(blocks):
        u_attn, u_mlp = grads[len(inputs) + 2 * l], grads[len(inputs) + 2 * l + 1]
        (on_through_mlp,) = torch.autograd.grad(mlp, attn, u_mlp, retain_graph=True,
                                                allow_unused=True)
        if on_through_mlp is not None:  # sequential blocks: the MLP reads the attention's output
            u_attn = u_attn - on_through_mlp
        through = torch.autograd.grad([attn, mlp], inputs, [u_attn, u_mlp], retain_graph=True,
                                      allow_unused=True)
        result.append([g if t is None else g - t for g, t in zip(full, through)])
    return result


def attention_internals(runner: Runner, adapter, tokens: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer, the adapter's queries ``q``, keys ``k`` and values ``v`` ``[n, H, pos, E]``
    (keys and values repeated per query head) of ``tokens`` ``[n, pos]``."""
    caches: list[dict] = []
    with torch.no_grad():
        arch.full_forward(adapter, arch.embedding(runner.model, tokens, adapter), caches)
    group = adapter.group
    return [{"q": c["q"].transpose(1, 2), "k": c["k"].repeat_interleave(group, 1),
             "v": c["v"].repeat_interleave(group, 1)} for c in caches]


def qk_adapter(model):
    """The block adapter the QK fix reads attention from; refuses models without one."""
    try:
        return arch.adapter_for(model)
    except arch.Unsupported as e:
        raise ValueError(f"atpstar's QK fix needs the model's attention internals: {e} Use "
                         "qk_fix=False.") from None


HEAD_SCORES = ("joint", "paths")


def check_settings(settings: dict) -> None:
    """Refuse bad atpstar settings, naming the setting (callers check before any run)."""
    for key in ("qk_fix", "graddrop"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"atpstar setting {key} must be True or False, got {settings[key]!r}.")
    if settings["head_score"] not in HEAD_SCORES:
        raise ValueError(f"atpstar setting head_score must be one of {HEAD_SCORES}, got "
                         f"{settings['head_score']!r}.")
    if settings["head_score"] == "paths" and not settings["qk_fix"]:
        raise ValueError("atpstar head_score='paths' sums the QK-fixed value, query and key terms; "
                         "it needs qk_fix=True.")


def check_kinds(kinds: list[ComponentKind]) -> None:
    """Refuse, before any run, the sites AtP* does not define: its QK fix is a head's
    query/key path through the softmax (heads), GradDrop applies to heads and neurons; the
    stream, whole attention/MLP outputs and q/k/v inputs have no such fix (use atp or ap)."""
    other = [kind.name for kind in kinds if not kind.hooked]
    if other:
        raise ValueError(f"atpstar scores heads and neurons only (its QK fix is a head's query/"
                         f"key path, over all positions); for {', '.join(other)} use atp (the "
                         "same estimate without the fix) or ap.")


@register(
    "atpstar",
    passes=backward_per_dropped_layer,
    check=check_settings,
    summary="AtP* (Kramar et al. 2024): atp with the QK fix (exact attention pattern for query/key "
            "patches) and GradDrop",
    sign="as ap (estimate of it); with graddrop the GradDrop magnitude, signed as the undropped estimate",
    help={"qk_fix": "the QK fix (exact attention pattern for query and key patches)",
          "graddrop": "GradDrop (1/(L-1) sum over dropped layers of |estimate|, signed as the "
                      "undropped estimate)",
          "head_score": "a head's score: joint (q, k, v patched together; the QK fix of that "
                        "patch is atp's score) or paths (value + query + key terms, each alone)"},
    qk_fix=True,
    graddrop=True,
    head_score="joint",
    max_memory=None,
    max_batch_rows=None,
)
def atp_star(runner: Runner, kinds: list[ComponentKind], settings: dict, show_progress: bool):
    check_settings(settings)
    check_kinds(kinds)
    qk_fix, graddrop, head_score = settings["qk_fix"], settings["graddrop"], settings["head_score"]
    n, L, model = runner.n, runner.n_layers, runner.model
    cfg = arch.config_of(model)
    heads_on = qk_fix and any(kind.branch == "attn" for kind in kinds)
    internals = {}
    if heads_on:
        adapter = qk_adapter(model)
        internals = {which: attention_internals(runner, adapter, tokens) for which, tokens in
                     (("run", runner.run_tokens), ("source", runner.source_tokens))}
    values = {kind.name: torch.empty(n, L, kind.n_units(cfg)) for kind in kinds}
    terms = ({t: torch.zeros(n, L, int(cfg.n_heads)) for t in ("value", "query", "key")}
             if heads_on else {})
    names = [(kind, layer, kind.hook_name(layer)) for kind in kinds for layer in range(L)]
    sites = [(BRANCH_POINT[kind.branch], layer) for kind, layer, _ in names]
    metric_run = torch.empty(n)
    for rows in runner.gradient_chunks(settings, f"atpstar {runner.direction}", show_progress):
        cpu_rows = rows.cpu()
        outs = [(point, layer) for layer in range(L) for point in ("attn_out", "mlp_out")]
        hold = Hold(sites + outs if graddrop else sites)
        with torch.enable_grad():
            metric = runner.metric_of(runner.run_tokens[rows], [hold], rows)
            # undropped first, then dropping layer 0, 1, ...
            grads_by_drop = gradients_by_dropped_block(
                metric, [hold.held[site] for site in sites],
                [(hold.held[outs[2 * l]], hold.held[outs[2 * l + 1]]) for l in range(L)]
                if graddrop else [])
        held = {name: hold.held[site] for (_, _, name), site in zip(names, sites)}
        metric_run[cpu_rows] = metric.detach().float().cpu()
        del metric
        # estimates[i][kind]: [b, L, units] with gradient i (undropped, then each drop)
        estimates = [{kind.name: torch.empty(len(rows), L, kind.n_units(cfg)) for kind in kinds}
                     for _ in grads_by_drop]
        for index, (kind, layer, name) in enumerate(names):
            if kind.branch == "attn" and heads_on:
                # one layer's patterns at a time: they do not depend on the dropped layer
                patterns = _layer_patterns(adapter, internals, layer, rows, held[name].detach())
                delta = runner.source_acts[name][rows] - held[name].detach()
                for est, grads in zip(estimates, grads_by_drop):
                    parts = _head_terms(patterns, grads[index])
                    joint = sum_per_unit(grads[index] * delta) if head_score == "joint" else None
                    est[kind.name][:, layer] = (sum(parts.values()) if joint is None
                                                else joint).float().cpu()
                    if est is estimates[0]:
                        for t, part in parts.items():
                            terms[t][cpu_rows, layer] = part.float().cpu()
                del patterns
            else:
                delta = runner.source_acts[name][rows] - held[name].detach()
                for est, grads in zip(estimates, grads_by_drop):
                    est[kind.name][:, layer] = sum_per_unit(grads[index] * delta).float().cpu()
        for kind in kinds:
            plain = estimates[0][kind.name]
            if graddrop:
                magnitude = torch.stack([e[kind.name].abs() for e in estimates[1:]]).sum(0)
                values[kind.name][cpu_rows] = torch.sign(plain) * magnitude / max(L - 1, 1)
            else:
                values[kind.name][cpu_rows] = plain
    runner.note_metric_run(metric_run.to(runner.run_tokens.device))
    extras = {f"qk.{t}.heads": tensor for t, tensor in terms.items()}
    return values, extras


def _layer_patterns(adapter, internals: dict, layer: int, rows: torch.Tensor,
                    z: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the head terms of one layer need besides the gradient: the run's pattern, the
    query- and key-patched patterns ``[b, heads, t, s]``, the run's values and the
    source-minus-run values ``[b, pos, heads, d_head]``. Refuses the layer unless the pattern
    and values reproduce the model's ``z`` ``[b, pos, heads, d_head]``."""
    run, source = internals["run"][layer], internals["source"][layer]
    q, k, v = (run[x][rows] for x in "qkv")
    q_src, k_src, v_src = (source[x][rows] for x in "qkv")
    positions = torch.arange(q.shape[2], device=q.device)
    pattern = torch.softmax(adapter.attention_scores(layer, q, k, positions), dim=-1)
    mine = torch.einsum("bhts,bhse->bthe", pattern, v)
    bad = mismatch({f"layer {layer}'s hook_z": (mine, z)}, z.dtype)
    if bad is not None:
        raise ValueError(f"atpstar's QK fix: the attention recomputed by the {adapter.family} "
                         f"adapter does not reproduce the model's {bad}; use qk_fix=False.")
    query = torch.softmax(adapter.attention_scores(layer, q_src, k, positions), dim=-1)
    key = torch.softmax(adapter.attention_scores(layer, q, k_src, positions), dim=-1)
    return {"pattern": pattern, "query": query, "key": key, "v": v.transpose(1, 2),
            "delta_v": (v_src - v).transpose(1, 2)}


def _head_terms(layer_patterns: dict[str, torch.Tensor], grad_z: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value, query and key terms ``[b, heads]`` of one layer's heads (see the module doc)
    for the gradient ``grad_z`` ``[b, pos, heads, d_head]``."""
    p = layer_patterns
    grad_pattern = pattern_gradient(grad_z, p["v"])
    return {"value": value_term(grad_z, p["pattern"], p["delta_v"]),
            "query": pattern_term(p["query"], p["pattern"], grad_pattern),
            "key": pattern_term(p["key"], p["pattern"], grad_pattern)}
