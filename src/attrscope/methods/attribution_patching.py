"""``atp``: attribution patching, the first-order estimate of activation patching.

score[i, layer, unit] = sum over positions and features of
d metric(run_i) / d activation  *  (source activation - run activation),
with the gradient taken at the run's activations. Same sign convention as ``ap``; equal to ``ap``
when the metric is linear in the patched activation. Costs one forward and one backward of the run
(plus the cached source run) for all components at once; samples are split into several passes
only when one pass would exceed ``max_memory`` (or ``max_batch_rows``, when given).

``positions`` (as ``ap``): ``"each"`` or position names keep the position axis (``[n, n_layers,
n_units, n_pos]``): the gradient x difference at each position, whose sum over every position
is the ``"all"`` score. Sites other than heads and neurons, and positions other than ``"all"``,
are computed by :func:`attrscope.sites.atp_sites`.
"""

from __future__ import annotations

import torch

from ..arch import config_of
from ..arch.forward import BRANCH_POINT, Hold
from ..components import ComponentKind, sum_per_unit
from ..engine import Runner
from ..estimate import run_source_and_backward
from ..registry import register
from ..sites import atp_sites, needs_sites_path, resolve_positions
from ..tasks.positions import POSITIONS_HELP


@register(
    "atp",
    passes=run_source_and_backward,
    summary="attribution patching: gradient at the run x (source - run activation), all components at once",
    sign="as ap (first-order estimate of it)",
    help={"positions": POSITIONS_HELP},
    positions="all",
    max_memory=None,
    max_batch_rows=None,
)
def attribution_patching(runner: Runner, kinds: list[ComponentKind], settings: dict,
                         show_progress: bool):
    positions = resolve_positions(runner.task, settings["positions"])
    sited = [kind for kind in kinds if needs_sites_path(kind, positions)]
    if sited:
        values = atp_sites(runner, sited, positions, settings, show_progress)
        rest = [kind for kind in kinds if kind not in sited]
        if rest:
            values.update(hooked_atp(runner, rest, settings, show_progress))
        return {kind.name: values[kind.name] for kind in kinds}, {}
    return hooked_atp(runner, kinds, settings, show_progress), {}


def hooked_atp(runner: Runner, kinds: list[ComponentKind], settings: dict, show_progress: bool
               ) -> dict[str, torch.Tensor]:
    """Heads and neurons over all positions (today's scores, bit for bit)."""
    n, n_layers, model = runner.n, runner.n_layers, runner.model
    cfg = config_of(model)
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
    return values
