"""``ap``: exact activation patching, every component of a kind patched on its own.

score[i, layer, unit] = metric(run_i with that unit's activation, at all positions, replaced by the
source prompt's) - metric(run_i). Denoising: positive = patching in the clean activation restores
the behaviour. Noising: negative = corrupting the component breaks the behaviour.

Many components are patched per forward pass: ``copies`` patched versions of the batch are
stacked along the batch dimension (copy c patches unit ``units[c]``). Samples are processed in a
few groups of similar length; each group's passes run only from its first clean/corrupted
difference (earlier positions are identical in both prompts) to its last answer position.
See :meth:`attrscope.engine.Runner.metric_with_units_patched` for how the patched run is computed.
"""

from __future__ import annotations

import torch

from ..components import ComponentKind
from ..engine import Runner, chunks, copies_per_pass, progress_bar
from . import register


@register(
    "ap",
    summary="exact activation patching: metric(patched run) - metric(run), one component at a time",
    sign="denoising: + restores the clean behaviour; noising: - means the component is needed",
    max_batch_rows=1024,
)
def activation_patching(runner: Runner, kinds: list[ComponentKind], settings: dict,
                        show_progress: bool):
    n_layers, cfg = runner.n_layers, runner.model.cfg
    groups = runner.sample_groups()
    per_group = [copies_per_pass(settings["max_batch_rows"], len(g)) for g in groups]
    total = sum(-(-kind.n_units(cfg) // c) * n_layers for kind in kinds for c in per_group)
    values = {}
    with torch.no_grad(), progress_bar(total, f"ap {runner.direction}", show_progress) as bar:
        for kind in kinds:
            n_units = kind.n_units(cfg)
            scores = torch.empty(runner.n, n_layers, n_units)
            all_units = torch.arange(n_units, device=runner.run_tokens.device)
            for layer in range(n_layers):
                for samples, copies in zip(groups, per_group):
                    base = runner.metric_run[samples]
                    for units in chunks(all_units, copies):
                        metric = runner.metric_with_units_patched(kind, layer, units, samples)
                        delta = metric.view(len(units), len(samples)) - base
                        scores[samples.cpu()[:, None], layer, units.cpu()[None, :]] = delta.T.float().cpu()
                        bar.update(1)
            values[kind.name] = scores
    return values, {}
