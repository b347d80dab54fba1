"""``ap``: exact activation patching, every component of a kind patched on its own.

score[i, layer, unit] = metric(run_i with that unit's activation, at all positions, replaced by the
source prompt's) - metric(run_i). Denoising: positive = patching in the clean activation restores
the behaviour. Noising: negative = corrupting the component breaks the behaviour.

Many components are patched per forward pass: ``copies`` patched versions of the batch are
stacked along the batch dimension (copy c patches unit ``units[c]``), and the pass starts at the
patched layer from the run's cached residual stream. A neuron reaches the residual stream only
through its row of ``W_out``, so a neuron patch is the rank-1 update
``resid_post += (source - run activation) * W_out[neuron]`` and the pass starts at the next layer
(for the last layer, only the final norm and unembedding run). The engine checks that identity on
the model before using it; otherwise neurons are patched with hooks like heads.
"""

from __future__ import annotations

import torch

from ..components import NEURONS, ComponentKind
from ..engine import Runner, chunks, copies_per_pass, progress_bar
from . import register


def _patch_units_hook(source: torch.Tensor, units: torch.Tensor, n: int):
    """Hook for ``len(units)`` stacked copies: copy c gets ``source[:, :, units[c]]``.

    source: ``[n, pos, units_total, *features]``; the hooked activation is
    ``[copies * n, pos, units_total, *features]``.
    """
    patch = source.index_select(2, units).movedim(2, 0)  # [copies, n, pos, *features]

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        stacked = act.clone().view(len(units), n, *act.shape[1:])
        stacked[torch.arange(len(units), device=act.device), :, :, units] = patch.to(act.dtype)
        return stacked.view(act.shape)

    return hook


def _patch_neurons_by_write(runner: Runner, layer: int, source: torch.Tensor,
                            units: torch.Tensor) -> torch.Tensor:
    """Metric ``[len(units) * n]``: copy c patches neuron ``units[c]`` as a rank-1 update of the
    residual stream leaving ``layer``. source: ``[n, pos, d_mlp]``."""
    run = runner.run_acts[NEURONS.hook_name(layer)]
    delta = (source.index_select(2, units) - run.index_select(2, units))  # [n, pos, copies]
    write = runner.neuron_write[layer].index_select(0, units)  # [copies, d_model]
    update = torch.einsum("npc,cd->cnpd", delta, write)
    resid = (runner.resid_pre[layer + 1].unsqueeze(0) + update).flatten(0, 1)
    return runner.metric_after_layer(layer, resid)


@register(
    "ap",
    summary="exact activation patching: metric(patched run) - metric(run), one component at a time",
    sign="denoising: + restores the clean behaviour; noising: - means the component is needed",
    max_batch_rows=1024,
)
def activation_patching(runner: Runner, kinds: list[ComponentKind], settings: dict,
                        show_progress: bool):
    n, n_layers = runner.n, runner.n_layers
    copies = copies_per_pass(settings["max_batch_rows"], n)
    cfg = runner.model.cfg
    total = sum(-(-kind.n_units(cfg) // copies) * n_layers for kind in kinds)
    values = {}
    with torch.no_grad(), progress_bar(total, f"ap {runner.direction}", show_progress) as bar:
        for kind in kinds:
            n_units = kind.n_units(cfg)
            scores = torch.empty(n, n_layers, n_units)
            for layer in range(n_layers):
                name = kind.hook_name(layer)
                source = runner.source_acts[name]
                all_units = torch.arange(n_units, device=source.device)
                for units in chunks(all_units, copies):
                    if kind.name == "neurons" and runner.neuron_write is not None:
                        metric = _patch_neurons_by_write(runner, layer, source, units)
                    else:
                        hook = _patch_units_hook(source, units, n)
                        metric = runner.metric_from_layer(layer, len(units), [(name, hook)])
                    delta = metric.view(len(units), n) - runner.metric_run
                    scores[:, layer, units.cpu()] = delta.T.float().cpu()
                    bar.update(1)
            values[kind.name] = scores
    return values, {}
