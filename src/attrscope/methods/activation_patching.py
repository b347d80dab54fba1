"""``ap``: exact activation patching, every component of a kind patched on its own.

score[i, layer, unit] = metric(run_i with that unit's activation, at all positions, replaced by the
source prompt's) - metric(run_i). Denoising: positive = patching in the clean activation restores
the behaviour. Noising: negative = corrupting the component breaks the behaviour.

Many components are patched per forward pass: ``copies`` patched versions of the batch are
stacked along the batch dimension (copy c patches unit ``units[c]``). Samples are processed in a
few groups of similar length; each group's passes run only from its first clean/corrupted
difference (earlier positions are identical in both prompts) to its last answer position.
See :meth:`attrscope.engine.Runner.metric_with_units_patched` for how the patched run is computed.

Settings: ``units`` (default None: all) restricts scoring to some units of a kind, the same
indices in every layer, e.g. ``units={"neurons": range(0, 3072, 48)}``, or per layer,
``units={"neurons": {3: [5, 17], 7: [100]}}`` (layers not named: none); unscored entries are NaN.
``screen`` (default None) turns on screened exact patching: see
:mod:`attrscope.methods.screening` (every site; with positions, the screen ranks (unit,
position) cells and exactly the top ones are patched).
``positions``: ``"all"`` (default: one patch covers every position), ``"each"`` (every position
on its own; scores ``[n, n_layers, n_units, seq]``) or position names (``["S2", "END"]``; each
prompt at its own token); every site of :mod:`attrscope.components` (``resid_pre``,
``attn_out``, ``mlp_out``, ``q``, ``k``, ``v``) and heads or neurons at positions other than
``"all"`` are patched by :func:`attrscope.sites.ap_layer`, which starts each patched run at the
patched layer and position (the FLOP limit of a patch).
``max_memory`` (bytes, or a size such as ``"2GB"``; default: a fraction of the memory free on the
device) bounds each pass, which decides how many copies it stacks; ``max_batch_rows``, when
given, sets the rows per pass directly instead.

Resumable: each (kind, layer) is one chunk of ``runner.checkpoint`` (see
:mod:`attrscope.checkpoint`).
"""

from __future__ import annotations

import torch

from ..arch import config_of
from ..components import ComponentKind
from ..engine import Runner, chunks, copies_per_pass, progress_bar
from ..estimate import patch_each_unit
from ..registry import register
from ..sites import ap_layer, ap_passes, needs_sites_path, resolve_positions
from ..tasks.positions import POSITIONS_HELP
from .screening import SCREEN_DEFAULTS, SCREEN_HELP, check_screen_settings, screened_patching


@register(
    "ap",
    passes=patch_each_unit,
    check=check_screen_settings,
    summary="exact activation patching: metric(patched run) - metric(run), one component at a time",
    sign="denoising: + restores the clean behaviour; noising: - means the component is needed",
    help={"units": "score only these units, the same in every layer, as KIND=INDICES[;KIND=INDICES] "
                   "with indices or start:stop[:step] ranges, e.g. neurons=0:3072:48 (default: "
                   "all; unscored ones are NaN)", "positions": POSITIONS_HELP, **SCREEN_HELP},
    units=None,
    positions="all",
    **SCREEN_DEFAULTS,
    max_memory=None,
    max_batch_rows=None,
)
def activation_patching(runner: Runner, kinds: list[ComponentKind], settings: dict,
                        show_progress: bool):
    if settings.get("screen"):
        return screened_patching(runner, kinds, settings, show_progress, activation_patching)
    positions = resolve_positions(runner.task, settings.get("positions", "all"))
    sited = [kind for kind in kinds if needs_sites_path(kind, positions)]
    n_layers, cfg = runner.n_layers, config_of(runner.model)
    device = runner.run_tokens.device
    chosen = settings["units"] or {kind.name: range(kind.n_units(cfg)) for kind in kinds}
    # per layer: {layer: indices} as given, else the same indices in every layer (of the kind)
    layers_of = {kind.name: kind.n_layers(n_layers) for kind in kinds}
    chosen = {name: c if isinstance(c, dict) else dict.fromkeys(range(layers_of[name]), c)
              for name, c in chosen.items()}
    groups = runner.sample_groups()
    # One number of units a pass for every group (the fewest any group's budget allows): a
    # shard of units that is a multiple of it falls on the passes of every group
    # (:func:`attrscope.shard.ap_pass_quantum`).
    copies = min(copies_per_pass(runner.rows_per_pass(settings, span=runner.span(g)), len(g))
                 for g in groups)
    per_group = [copies] * len(groups)
    passes_per_layer = {kind.name: [sum(-(-len(chosen[kind.name].get(layer, ())) // c)
                                        for c in per_group) for layer in range(n_layers)]
                        for kind in kinds}
    for kind in sited:
        passes_per_layer[kind.name] = [ap_passes(runner, len(chosen[kind.name].get(layer, ())),
                                                 positions) for layer in range(layers_of[kind.name])]
    total = sum(sum(p) for p in passes_per_layer.values())
    values = {}
    with torch.no_grad(), progress_bar(total, f"ap {runner.direction}", show_progress) as bar:
        for kind in sited:
            skip = passes_per_layer[kind.name]

            def site_layer(layer: int, kind=kind) -> dict:
                units = torch.as_tensor(list(chosen[kind.name].get(layer, ())), dtype=torch.long,
                                        device=device)
                return {"scores": ap_layer(runner, kind, layer, units, positions, settings,
                                           lambda: bar.update(1))}

            values[kind.name] = torch.stack([runner.checkpoint.chunk(
                f"{kind.name}.layer{layer}", lambda: site_layer(layer),
                on_reuse=lambda: bar.update(skip[layer]))["scores"]
                for layer in range(layers_of[kind.name])], dim=1)
        for kind in kinds:
            if kind in sited:
                continue
            def one_layer(layer: int) -> dict[str, torch.Tensor]:
                """``{"scores": [n, n_units]}``; NaN marks units not scored (``units`` setting)."""
                scores = torch.full((runner.n, kind.n_units(cfg)), float("nan"))
                units_scored = torch.as_tensor(list(chosen[kind.name].get(layer, ())),
                                               dtype=torch.long, device=device)
                for samples, copies in zip(groups, per_group):
                    base = runner.metric_run[samples]
                    for units in chunks(units_scored, copies):
                        metric = runner.metric_with_units_patched(kind, layer, units, samples)
                        delta = metric.view(len(units), len(samples)) - base
                        scores[samples.cpu()[:, None], units.cpu()[None, :]] = delta.T.float().cpu()
                        bar.update(1)
                return {"scores": scores}

            skip = passes_per_layer[kind.name]
            values[kind.name] = torch.stack([runner.checkpoint.chunk(
                f"{kind.name}.layer{layer}", lambda: one_layer(layer),
                on_reuse=lambda: bar.update(skip[layer]))["scores"] for layer in range(n_layers)],
                dim=1)
    return {kind.name: values[kind.name] for kind in kinds}, {}
