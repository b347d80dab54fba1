"""``atp``: attribution patching, the first-order estimate of activation patching.

score[i, layer, unit] = sum over positions and features of
d metric(run_i) / d activation  *  (source activation - run activation),
with the gradient taken at the run's activations. Same sign convention as ``ap``; equal to ``ap``
when the metric is linear in the patched activation. Costs one forward and one backward of the run
(plus the cached source run) for all components at once; samples are split into several passes
only when one pass would exceed ``max_memory`` (or ``max_batch_rows``, when given).
"""

from __future__ import annotations

import functools

import torch

from ..components import ComponentKind, sum_per_unit
from ..engine import Runner
from ..estimate import run_source_and_backward
from ..registry import register


def holding_hook(held: dict[str, torch.Tensor], name: str):
    """A forward hook that stores the activation under ``name`` in ``held`` and returns it, so
    that the model computes on this very tensor (the bridge hands hooks a reshaped view of
    hook_z) and its gradient is the total one."""
    def keep(act: torch.Tensor, hook) -> torch.Tensor:
        held[name] = act
        return act

    return keep


@register(
    "atp",
    passes=run_source_and_backward,
    summary="attribution patching: gradient at the run x (source - run activation), all components at once",
    sign="as ap (first-order estimate of it)",
    max_memory=None,
    max_batch_rows=None,
)
def attribution_patching(runner: Runner, kinds: list[ComponentKind], settings: dict,
                         show_progress: bool):
    n, n_layers, model = runner.n, runner.n_layers, runner.model
    cfg = model.cfg
    values = {kind.name: torch.empty(n, n_layers, kind.n_units(cfg)) for kind in kinds}
    names = [(kind, layer, kind.hook_name(layer)) for kind in kinds for layer in range(n_layers)]
    metric_run = torch.empty(n)
    for rows in runner.gradient_chunks(settings, f"atp {runner.direction}", show_progress):
        held: dict[str, torch.Tensor] = {}
        keeper = functools.partial(holding_hook, held)
        with torch.enable_grad():
            # This forward is the run itself: its activations are the run's, so no separate
            # cached run is needed (2 forwards + 1 backward in all, with the source run).
            metric = runner.forward_metric(
                runner.run_tokens[rows], None, [(name, keeper(name)) for _, _, name in names], rows
            )
            grads = torch.autograd.grad(metric.sum(), [held[name] for _, _, name in names])
        metric_run[rows.cpu()] = metric.detach().float().cpu()
        for (kind, layer, name), grad in zip(names, grads):
            delta = runner.source_acts[name][rows] - held[name].detach()
            values[kind.name][rows.cpu(), layer] = sum_per_unit(grad * delta).float().cpu()
    runner.note_metric_run(metric_run.to(runner.run_tokens.device))
    return values, {}
