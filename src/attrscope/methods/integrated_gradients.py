"""``ig``: layer integrated gradients at internal activations, as in the seed study.

For each layer and component kind, the layer's whole activation (all heads, or all neurons, at
all positions) moves along a straight path ``a(alpha) = baseline + alpha * (input - baseline)``:

- ``baseline="matched"`` (default): baseline = the run's activation, input = the source
  prompt's. Attributions sum to metric(run with the layer patched to the source) - metric(run),
  so they are on the scale and sign of ``ap`` (but move the whole layer together, not one
  component: a different question when components interact).
- ``baseline="zero"``: baseline = 0 at the attributed activation itself (not at the layer input),
  input = the run's activation. Attributions sum to metric(run) - metric(run with the layer zeroed).

attribution[unit] = sum over positions and features of mean-gradient * (input - baseline): a sum,
not a mean, so completeness holds. The mean gradient uses Gauss-Legendre quadrature with
``n_steps`` nodes on [0, 1] (as captum's default). Extras, per kind, ``[n, n_layers]``:
``completeness_residual.<kind>`` = sum of attributions - (metric(input) - metric(baseline)), and
``path_delta.<kind>`` = metric(input) - metric(baseline).

``positions`` (as ``ap``): the layer still moves as a whole, over every position; ``"each"`` or
position names keep each position's share of the attribution (``[n, n_layers, n_units, n_pos]``;
summed over ``"each"``'s positions, the ``"all"`` score; with names the completeness residual is
NaN, as the named positions do not cover the path). Sites other than heads and neurons, and
positions other than ``"all"``, run through :func:`attrscope.sites.ig_layer`.

The samples are integrated in groups (:func:`attrscope.sites.ig_groups`), each over its own
positions: from the group's first clean/corrupted difference to its last answer. Path steps are
stacked along the batch dimension, as many per forward+backward pass as ``max_memory`` allows
for a pass from that layer on over those positions (``max_batch_rows``, when given, sets the rows
per pass instead); neither changes the result. Resumable: each (kind, layer) is one chunk of
``runner.checkpoint`` (see :mod:`attrscope.checkpoint`).
"""

from __future__ import annotations

import torch

from ..components import ComponentKind, sum_per_unit
from ..engine import Runner, progress_bar
from ..estimate import integrate_each_layer
from ..quadrature import gauss_legendre, path_gradient_sum  # noqa: F401  (gauss_legendre re-exported: its historical home)
from ..registry import register
from ..sites import ig_groups, ig_layer, needs_sites_path, resolve_positions, whole_span
from ..tasks.positions import POSITIONS_HELP

BASELINES = ("matched", "zero")


def path_endpoints(runner: Runner, name: str, baseline: str, samples: torch.Tensor,
                   span: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(baseline, input) of ``samples`` at positions ``span`` (start, end), activations
    ``[g, end - start, units, *features]``; the path moves these positions only (earlier
    positions are equal at both ends, later ones reach no answer of these samples)."""
    start, end = span
    run = runner.run_acts[name][samples, start:end]
    if baseline == "matched":
        return run, runner.source_acts[name][samples, start:end]
    if baseline == "zero":
        return torch.zeros_like(run), run
    raise ValueError(f"Unknown IG baseline {baseline!r}; use one of {BASELINES}.")


@register(
    "ig",
    passes=integrate_each_layer,
    summary="layer integrated gradients: each layer's activation moved as a whole along a straight path",
    sign="matched baseline: as ap (sums to the whole layer's patching effect); zero baseline: "
    "+ means the activation raises the metric relative to zero",
    help={"n_steps": "integration steps (Gauss-Legendre)",
          "baseline": "matched (path from the run's to the other prompt's activations) or zero "
                      "(from zero to the run's)",
          "positions": POSITIONS_HELP},
    n_steps=50,
    baseline="matched",
    positions="all",
    max_memory=None,
    max_batch_rows=None,
)
def integrated_gradients(runner: Runner, kinds: list[ComponentKind], settings: dict,
                         show_progress: bool):
    n_layers = runner.n_layers
    baseline_kind = settings["baseline"]
    if baseline_kind not in BASELINES:
        raise ValueError(f"Unknown IG baseline {baseline_kind!r}; use one of {BASELINES}.")
    n_steps = int(settings["n_steps"])
    alphas, weights = gauss_legendre(n_steps)

    def passes(layer: int) -> int:
        return sum(-(-n_steps // steps) for _, steps in per_layer[layer]) + 1

    positions = resolve_positions(runner.task, settings["positions"])
    per_layer = [ig_groups(runner, layer, baseline_kind, settings)
                 for layer in range(n_layers + any(kind.final_layer for kind in kinds))]
    values, extras = {}, {}
    total = sum(passes(layer) for kind in kinds for layer in range(kind.n_layers(n_layers)))
    with progress_bar(total, f"ig {runner.direction}", show_progress) as bar:
        for kind in kinds:
            if needs_sites_path(kind, positions):
                def compute(layer: int, kind=kind) -> dict:
                    return ig_layer(runner, kind, layer, baseline_kind, (alphas, weights), positions,
                                    per_layer[layer], lambda: bar.update(1))
            else:
                def compute(layer: int, kind=kind) -> dict:
                    return layer_attribution(runner, kind, layer, baseline_kind, (alphas, weights),
                                             per_layer[layer], bar)
            layers = [runner.checkpoint.chunk(
                f"{kind.name}.layer{layer}", lambda: compute(layer),
                on_reuse=lambda: bar.update(passes(layer)))
                for layer in range(kind.n_layers(n_layers))]
            values[kind.name] = torch.stack([c["attribution"] for c in layers], dim=1)
            extras[f"completeness_residual.{kind.name}"] = torch.stack(
                [c["residual"] for c in layers], dim=1)
            extras[f"path_delta.{kind.name}"] = torch.stack([c["change"] for c in layers], dim=1)
    return values, extras


def layer_attribution(runner: Runner, kind: ComponentKind, layer: int, baseline_kind: str,
                      grid: tuple[torch.Tensor, torch.Tensor], groups: list, bar
                      ) -> dict[str, torch.Tensor]:
    """One layer's ``{"attribution": [n, n_units], "change": [n], "residual": [n]}`` (see the
    module docstring). ``grid``: the quadrature's ``(alphas, weights)``; ``groups``:
    ``((samples, span), steps)`` per sample group (:func:`attrscope.sites.ig_groups`),
    ``steps`` path steps per forward+backward pass."""
    alphas, weights = grid
    name = kind.hook_name(layer)
    attribution = None
    for (samples, span), steps in groups:
        base, inp = path_endpoints(runner, name, baseline_kind, samples, span)
        delta = inp - base
        grad_sum = path_gradient_sum(
            base, delta, alphas, weights, steps,
            lambda path: runner.metric_with_activation(kind, layer, path, span[0], samples),
            lambda: bar.update(1))
        per_unit = sum_per_unit(grad_sum * delta).float().cpu()
        if attribution is None:
            attribution = torch.zeros(runner.n, per_unit.shape[1])
        attribution[samples.cpu()] = per_unit
    # One end of the path is the run's own activation, whose metric is the run's: only the other
    # end needs a forward, one for every group (each too small to fill a pass of its own).
    samples, span = whole_span(groups)
    base, inp = path_endpoints(runner, name, baseline_kind, samples, span)
    with torch.no_grad():
        if baseline_kind == "matched":
            change = runner.metric_with_activation(kind, layer, inp, span[0]) - runner.metric_run
        else:
            change = runner.metric_run - runner.metric_with_activation(kind, layer, base, span[0])
    bar.update(1)
    change = change.float().cpu()
    return {"attribution": attribution, "change": change,
            "residual": attribution.sum(-1) - change}
