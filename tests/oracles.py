"""Straightforward implementations kept as the test oracles of the fast code.

One patch per full forward pass, full logits, no caching tricks: slow and obviously right.
"""

from __future__ import annotations

import torch

from attrscope.components import ComponentKind


def run_and_source(task, direction):
    if direction == "denoising":
        return task.corrupted_tokens, task.clean_tokens
    return task.clean_tokens, task.corrupted_tokens


def cache_of(model, tokens, name):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == name)
    return cache[name]


def patch_one_unit_per_forward(model, task, direction, kind: ComponentKind, layer, units):
    """Per-sample AP scores ``[n, len(units)]``: one full forward per unit."""
    run, source = run_and_source(task, direction)
    name = kind.hook_name(layer)
    with torch.no_grad():
        base = task.metric(model(run))
        source_act = cache_of(model, source, name)
        out = torch.empty(task.n, len(units))
        for col, unit in enumerate(units):
            def patch(act, hook, unit=unit):
                act = act.clone()
                act[:, :, unit] = source_act[:, :, unit]
                return act

            logits = model.run_with_hooks(run, fwd_hooks=[(name, patch)])
            out[:, col] = task.metric(logits) - base
    return out


def zero_layer_metric(model, task, tokens, name):
    """Metric ``[n]`` with the whole activation at ``name`` set to zero."""
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook: torch.zeros_like(act))])
    return task.metric(logits)


def _metric_with_activation(model, task, tokens, name, activation):
    """Metric ``[n]`` of a full forward of ``tokens`` with the activation at ``name`` replaced."""
    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda act, hook: activation)])
    return task.metric(logits)


def gradient_times_difference(model, task, direction, kind: ComponentKind, layer, alphas=(0.0,),
                              weights=(1.0,)):
    """Per-unit ``sum_i weights[i] * grad(run + alphas[i] (source - run)) . (source - run)``
    summed over positions and features, ``[n, n_units]``: one full forward and backward per
    alpha. ``alphas=(0,)``: attribution patching; Gauss-Legendre nodes: layer integrated
    gradients from the run's activation to the source's."""
    run, source = run_and_source(task, direction)
    name = kind.hook_name(layer)
    run_act, source_act = cache_of(model, run, name), cache_of(model, source, name)
    diff = (source_act - run_act).detach()
    total = torch.zeros_like(diff, dtype=torch.float64)
    for alpha, weight in zip(alphas, weights):
        point = (run_act + float(alpha) * diff).detach().requires_grad_(True)
        _metric_with_activation(model, task, run, name, point).sum().backward()
        total += float(weight) * (point.grad * diff).double()
    return total.reshape(task.n, total.shape[1], total.shape[2], -1).sum(dim=(1, 3)).float()


def integrated_gradients_loop(model, task, direction, kind: ComponentKind, layer, n_steps):
    """Layer IG ``[n, n_units]`` from the run's to the source's activation of ``layer`` with
    ``n_steps`` Gauss-Legendre nodes on [0, 1] (numpy's, mapped here)."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return gradient_times_difference(model, task, direction, kind, layer, 0.5 * (nodes + 1.0),
                                     0.5 * weights)


def one_length_task(model, n: int = 3, seed: int = 11):
    """``n`` IOI prompt pairs of one token length (the commonest in a pool), for
    ``positions="each"``, which needs prompts of one length."""
    from collections import Counter

    import attrscope
    from attrscope.tasks import build_task

    pool = attrscope.load_task("ioi", model, n=max(40, 10 * n), seed=seed)
    length = Counter(pool.answer_pos.tolist()).most_common(1)[0][0]
    pairs = [p for p, at in zip(pool.pairs, pool.answer_pos.tolist()) if at == length][:n]
    return build_task(model, pairs, name="ioi-one-length")


def one_edge_loop(er, edges: list[int], at: torch.Tensor | None = None) -> torch.Tensor:
    """Exact edge patching, one full forward per edge, its additions built by hand; with ``at``
    ``[n]`` the source's change enters only at each row's position ``at``.
    -> ``[n, len(edges)]``."""
    from attrscope.edges.forward import Additions

    graph, ef = er.graph, er.forward
    n, P, _, d = er.delta.shape
    rows = torch.arange(n)
    out = torch.empty(n, len(edges))
    for j, e in enumerate(edges):
        dest, source = int(graph.dest_index[e]), int(graph.source_index[e])
        add = Additions.none(graph.n_layers)
        name, which = graph.dest_names[dest]
        delta = er.delta[:, :, source]
        if at is not None:
            delta = torch.zeros_like(delta)
            delta[rows, at] = er.delta[rows, at, source]
        if name == "logits":
            add.logits = delta
        elif name.startswith("mlp"):
            add.mlp[int(name.split()[1])] = delta
        else:  # attention inputs in destination order within the layer
            layer, slot = divmod(dest, graph.dests_per_layer)
            attn = torch.zeros(n, P, graph.n_attn_dests, d)
            attn[:, :, slot] = delta
            add.attn[layer] = attn
        with torch.no_grad():
            metric = ef.patched(er.run_embed, *er.answer_args(rows), add)
        out[:, j] = metric - er.metric_run
    return out


def edge_ablation_by_hand(model, task, graph, kept_at: torch.Tensor) -> torch.Tensor:
    """Oracle for circuits of (edge, position) pairs on a GPT-2-style model (pre-LayerNorm,
    sequential blocks, learned positions), written from its weights alone: the metric ``[n]``
    of the clean prompts where, at every token t of prompt i, each edge e with
    ``kept_at[i, t, e]`` False feeds its destination's input at t the source's output at t in
    the corrupted prompt instead of its output in this forward ("other" ablation). Every
    destination input (each head's q, k and v, each MLP's, the final norm's) is summed here
    from the sources' outputs, looked up by edge label (``Graph.edge``)."""
    import torch.nn.functional as F

    from attrscope.edges.graph import edge_label

    L, H = graph.n_layers, graph.n_heads
    names = ["input"] + [x for layer in range(L)
                         for x in [f"{layer}.{h}" for h in range(H)] + [f"mlp {layer}"]]

    def forward(tokens, replace=None):
        n, P = tokens.shape
        outs = [model.W_E[tokens] + model.W_pos[:P]]
        bias = torch.zeros(model.cfg.d_model)

        def input_of(dest: str, which: str | None) -> torch.Tensor:
            x = sum(outs) + bias
            if replace is None:
                return x
            for s, out in enumerate(outs):
                e = graph.edge_index[edge_label(names[s], dest, which)]
                ablated = (~kept_at[:, :P, e]).float()[..., None]
                x = x + ablated * (replace[s] - out)
            return x

        causal = torch.ones(P, P, dtype=torch.bool).tril()
        for layer in range(L):
            block, heads = model.blocks[layer], []
            for h in range(H):
                q, k, v = (block.ln1(input_of(f"{layer}.{h}", w)) @ W[layer, h] + b[layer, h]
                           for w, W, b in (("q", model.W_Q, model.b_Q), ("k", model.W_K, model.b_K),
                                           ("v", model.W_V, model.b_V)))
                att = (q @ k.transpose(1, 2) / model.cfg.d_head ** 0.5).masked_fill(~causal,
                                                                                   float("-inf"))
                heads.append(att.softmax(-1) @ v @ model.W_O[layer, h])
            outs += heads
            bias = bias + model.b_O[layer]
            hidden = block.ln2(input_of(f"mlp {layer}", None)) @ model.W_in[layer] + model.b_in[layer]
            outs.append(F.gelu(hidden, approximate="tanh") @ model.W_out[layer])
            bias = bias + model.b_out[layer]
        return model.ln_final(input_of("logits", None)) @ model.W_U + model.b_U, outs

    with torch.no_grad():
        _, other = forward(task.corrupted_tokens)
        logits, _ = forward(task.clean_tokens, replace=other)
    return task.metric(logits)
