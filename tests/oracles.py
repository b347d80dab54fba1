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
