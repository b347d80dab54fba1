"""``atp``: attribution patching, the first-order estimate of activation patching.

score[i, layer, unit] = sum over positions and features of
d metric(run_i) / d activation  *  (source activation - run activation),
with the gradient taken at the run's activations. Same sign convention as ``ap``; equal to ``ap``
when the metric is linear in the patched activation. Costs one forward and one backward of the run
(plus the cached source run) for all components at once; samples are split into several passes
only when one pass would exceed ``max_memory`` (or ``max_batch_rows``, when given).
"""

from __future__ import annotations

import torch

from ..arch.forward import BRANCH_POINT, Hold
from ..components import ComponentKind, sum_per_unit
from ..engine import Runner
from ..estimate import run_source_and_backward
from ..registry import register


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
    sites = [(BRANCH_POINT[kind.branch], layer) for kind, layer, _ in names]
    metric_run = torch.empty(n)
    for rows in runner.gradient_chunks(settings, f"atp {runner.direction}", show_progress):
        hold = Hold(sites)
        with torch.enable_grad():
            # This forward is the run itself: its activations are the run's, so no separate
            # cached run is needed (2 forwards + 1 backward in all, with the source run).
            metric = runner.metric_of(runner.run_tokens[rows], [hold], rows)
            grads = torch.autograd.grad(metric.sum(), [hold.held[site] for site in sites])
        metric_run[rows.cpu()] = metric.detach().float().cpu()
        for (kind, layer, name), site, grad in zip(names, sites, grads):
            delta = runner.source_acts[name][rows] - hold.held[site].detach()
            values[kind.name][rows.cpu(), layer] = sum_per_unit(grad * delta).float().cpu()
    runner.note_metric_run(metric_run.to(runner.run_tokens.device))
    return values, {}
