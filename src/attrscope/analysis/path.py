"""Integration-path analysis of one component: how the metric and its gradient behave while only
that component moves from the run's activation to the source prompt's.

For a component (a head ``L.H`` or a neuron ``L.N``) and a direction, the path is

    a(alpha) = run activation, with the component's own activation (every position, every
               feature) replaced by  run + alpha * (source - run),  alpha in [0, 1]

and nothing else changes. ``denoising`` starts from the corrupted run (alpha = 0) and moves the
component toward its clean activation (alpha = 1); ``noising`` starts from the clean run and moves
it toward the corrupted activation. Recorded at alpha = 0, at ``n_steps`` Gauss-Legendre nodes in
(0, 1) and at alpha = 1, per sample:

- ``metric``: m(alpha) = the task metric (e.g. logit(answer) - logit(distractor)) of the run with
  the path activation.
  m(0) is the unpatched run, m(1) the run with the component patched, so
  ``patch_score = m(1) - m(0)`` is exactly the ``ap`` score of the component (same sign
  convention: denoising + restores the clean behaviour, noising - means the component is needed).
- ``grad``: g(alpha) = dm/dalpha = sum over positions and features of
  dm/da(alpha) * (source - run), the **component-summed gradient** (a sum, never a mean).

Summaries (all per sample, on the metric's scale):

- ``ig``: the per-component integrated gradient, sum_k w_k g(alpha_k) over the nodes. It equals
  ``patch_score`` up to quadrature error (``completeness_residual = ig - patch_score``).
- ``output_range``: max - min of m over the recorded points.
- ``grad_range``: max - min of g over the recorded points (the seed study's "gradient range",
  here of the summed gradient).
- ``saturation``: the fraction of the path (by quadrature weight, i.e. of the interval [0, 1])
  on which |g(alpha)| is below ``threshold`` (default 0.1) times the largest |g| on the path.
  0 means the gradient never flattens (a linear path has saturation 0); near 1 means the metric
  changes in a narrow window of alpha and is flat - saturated - elsewhere, so IG sees that
  component only through a few nodes. NaN where g is exactly zero everywhere.
- ``split_ig(r)``: the part of the IG sum before the output reaches a fraction ``r`` of its range
  (the "split IG" idea of looking only at the unsaturated part of the path). Progress along the
  path is the output's cumulative variation sum |m(alpha_i) - m(alpha_{i-1})| over the recorded
  points, as a fraction of its total: for a monotone path this is exactly the fraction of the
  output range ``|m(1) - m(0)| = max - min`` covered so far; for a non-monotone one it counts
  every excursion. alpha_r is where the progress reaches r (linear between recorded points),
  and split_ig(r) sums the quadrature terms w_k g(alpha_k) of the nodes with alpha_k <= alpha_r,
  so it resolves alpha_r only to the node spacing. r = 1 takes the whole path: split_ig(1) = ig.

Everything is computed in batched passes: all recorded points of all requested units of a layer
are stacked along the batch (``max_batch_rows`` rows per pass) and run from the patched layer on
with the Runner's downstream-only machinery (:meth:`attrscope.engine.Runner.units_moved`: on the
block adapter the unit's change enters the residual stream directly and only each sample
group's span of positions is computed). dm/dalpha comes from autograd with one alpha per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..arch import config_of
from ..components import KINDS, Component, ComponentKind, parse_component  # noqa: F401
from ..checkpoint import NO_CHECKPOINT, Checkpoint, NoCheckpoint
from ..engine import Runner, chunks, copies_per_pass, progress_bar
from ..quadrature import gauss_legendre
from . import agreement as correlation


# -- components ----------------------------------------------------------------------------------
# -- pure functions of a recorded path -----------------------------------------------------------
def split_point(alphas: torch.Tensor, metric: torch.Tensor, r: float) -> torch.Tensor:
    """alpha_r ``[n]``: where the output's cumulative variation along the path first reaches
    fraction ``r`` of its total, interpolated linearly between the two recorded points around it
    (1.0 for ``r >= 1``; 0.0 for ``r <= 0`` or where the output never moves).

    alphas: ``[P]`` increasing, from 0 to 1; metric: ``[n, P]``."""
    n = metric.shape[0]
    alphas = alphas.to(torch.float64)
    if r >= 1:
        return torch.ones(n, dtype=torch.float64)
    if r <= 0:
        return torch.zeros(n, dtype=torch.float64)
    steps = (metric[:, 1:] - metric[:, :-1]).abs().to(torch.float64)
    progress = torch.cat([torch.zeros(n, 1, dtype=torch.float64), steps.cumsum(-1)], dim=1)
    target = r * progress[:, -1]
    first = (progress >= target[:, None]).to(torch.int64).argmax(dim=1)  # the last point reaches it
    before = (first - 1).clamp_min(0)
    rows = torch.arange(n)
    p0, p1 = progress[rows, before], progress[rows, first]
    a0, a1 = alphas[before], alphas[first]
    frac = torch.where(p1 > p0, (target - p0) / (p1 - p0).clamp_min(1e-300), torch.zeros_like(p0))
    return a0 + frac * (a1 - a0)


def split_ig(alphas: torch.Tensor, weights: torch.Tensor, metric: torch.Tensor, grad: torch.Tensor,
             r: float) -> torch.Tensor:
    """Split IG ``[n]``: sum of ``weights * grad`` over the points with alpha <= alpha_r.

    alphas, weights: ``[P]`` (weights 0 at the end points); metric, grad: ``[n, P]``."""
    cut = split_point(alphas, metric, r)
    keep = alphas.to(torch.float64)[None, :] <= cut[:, None]
    terms = weights.to(torch.float64)[None, :] * grad.to(torch.float64)
    return (terms * keep).sum(-1)


def saturation(weights: torch.Tensor, grad: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Fraction ``[n]`` of the path (by quadrature weight) where |grad| < threshold * max |grad|;
    NaN where grad is zero everywhere. weights: ``[P]``; grad: ``[n, P]``."""
    magnitude = grad.to(torch.float64).abs()
    peak = magnitude.max(dim=-1, keepdim=True).values
    flat = (magnitude < threshold * peak).to(torch.float64)
    out = (flat * weights.to(torch.float64)[None, :]).sum(-1) / weights.to(torch.float64).sum()
    return torch.where(peak.squeeze(-1) > 0, out, torch.full_like(out, math.nan))


def value_range(x: torch.Tensor) -> torch.Tensor:
    """max - min over the last axis: ``[n, P]`` -> ``[n]``."""
    return x.max(dim=-1).values - x.min(dim=-1).values


# -- recorded path of one component ----------------------------------------------------------------
@dataclass
class ComponentPath:
    """The recorded path of one component (see the module docstring for every quantity).

    alphas, weights: ``[P]`` float64, P = n_steps + 2 (0, the Gauss-Legendre nodes, 1; weights
    are 0 at the two end points and sum to 1). metric, grad: ``[n, P]`` float64 per sample.
    """

    component: str
    kind: str
    layer: int
    unit: int
    direction: str
    alphas: torch.Tensor
    weights: torch.Tensor
    metric: torch.Tensor
    grad: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def metric_start(self) -> torch.Tensor:
        """m(0) ``[n]``: the unpatched run."""
        return self.metric[:, 0]

    @property
    def metric_end(self) -> torch.Tensor:
        """m(1) ``[n]``: the run with the component patched from the source prompt."""
        return self.metric[:, -1]

    @property
    def patch_score(self) -> torch.Tensor:
        """m(1) - m(0) ``[n]``: the exact activation-patching score of the component."""
        return self.metric_end - self.metric_start

    @property
    def ig(self) -> torch.Tensor:
        """Per-component integrated gradient ``[n]``: sum_k w_k dm/dalpha(alpha_k)."""
        return (self.weights[None, :] * self.grad).sum(-1)

    @property
    def completeness_residual(self) -> torch.Tensor:
        return self.ig - self.patch_score

    @property
    def output_range(self) -> torch.Tensor:
        return value_range(self.metric)

    @property
    def grad_range(self) -> torch.Tensor:
        return value_range(self.grad)

    def saturation(self, threshold: float = 0.1) -> torch.Tensor:
        return saturation(self.weights, self.grad, threshold)

    def split_point(self, r: float) -> torch.Tensor:
        return split_point(self.alphas, self.metric, r)

    def split_ig(self, r: float) -> torch.Tensor:
        return split_ig(self.alphas, self.weights, self.metric, self.grad, r)

    def summary(self, r: float = 0.5, threshold: float = 0.1) -> dict[str, float]:
        """Means over samples of the per-sample summaries (NaN saturations left out)."""
        sat = self.saturation(threshold)
        return {
            "component": self.component,
            "patch_score": float(self.patch_score.mean()),
            "ig": float(self.ig.mean()),
            "completeness_residual": float(self.completeness_residual.abs().max()),
            "output_range": float(self.output_range.mean()),
            "grad_range": float(self.grad_range.mean()),
            "saturation": float(sat[~sat.isnan()].mean()) if (~sat.isnan()).any() else math.nan,
            f"split_ig_{r:g}": float(self.split_ig(r).mean()),
            f"alpha_{r:g}": float(self.split_point(r).mean()),
        }


def path_points(n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """alphas ``[n_steps + 2]`` = (0, Gauss-Legendre nodes, 1) and their weights (0, w, 0)."""
    nodes, weights = gauss_legendre(n_steps)
    zero, one = torch.zeros(1, dtype=nodes.dtype), torch.ones(1, dtype=nodes.dtype)
    return torch.cat([zero, nodes, one]), torch.cat([zero, weights, zero])


def unit_paths(runner: Runner, kind: ComponentKind, layer: int,
               units: Sequence[int] | torch.Tensor | None = None, n_steps: int = 50,
               max_batch_rows: int = 1024) -> list[ComponentPath]:
    """The paths of ``units`` (default: all) of ``layer``, each moving on its own.

    All (unit, alpha) pairs are stacked along the batch, ``max_batch_rows // g`` copies of a
    group of g samples per pass (samples in groups of similar length, as in ``ap``). Copy c
    moves unit ``unit_c`` to ``run + alpha_c * (source - run)``; alpha is one leaf per row
    ``[copies, g]``, so autograd gives each row's dm/dalpha.
    """
    units = list(range(kind.n_units(config_of(runner.model)))) if units is None else [int(u) for u in units]
    metric, grad = unit_path_tensors(runner, kind, layer, units, n_steps, max_batch_rows)
    return as_paths(kind, layer, units, runner.direction, n_steps, metric, grad)


def as_paths(kind: ComponentKind, layer: int, units: Sequence[int], direction: str, n_steps: int,
             metric: torch.Tensor, grad: torch.Tensor) -> list[ComponentPath]:
    """The :class:`ComponentPath` of each of ``units`` from ``metric``, ``grad``
    ``[len(units), n, n_steps + 2]``."""
    alphas, weights = path_points(n_steps)
    return [ComponentPath(kind.label(layer, u), kind.name, layer, u, direction, alphas,
                          weights, metric[i], grad[i], {"n_steps": n_steps})
            for i, u in enumerate(units)]


def unit_path_tensors(runner: Runner, kind: ComponentKind, layer: int, units: list[int],
                      n_steps: int, max_batch_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(metric, grad)``, each ``[len(units), n, n_steps + 2]`` float64: the path quantities
    of :func:`unit_paths`."""
    n = runner.n
    alphas, _ = path_points(n_steps)
    P = len(alphas)
    metric = torch.empty(len(units), n, P, dtype=torch.float64)
    grad = torch.empty(len(units), n, P, dtype=torch.float64)
    pairs = [(i, p) for i in range(len(units)) for p in range(P)]
    for samples in runner.sample_groups():
        samples = samples.to(runner.run_tokens.device)
        path_metric = runner.units_moved(kind, layer, units, samples)
        g_rows = samples.cpu()
        for chunk in chunks(pairs, copies_per_pass(max_batch_rows, len(samples))):
            which = torch.tensor([i for i, _ in chunk])
            point = torch.tensor([p for _, p in chunk])
            dtype = runner.resid_pre[0].dtype
            alpha = alphas[point].to(samples.device, dtype)[:, None].repeat(1, len(samples))
            alpha.requires_grad_(True)
            with torch.enable_grad():
                m = path_metric(which, alpha)
                (g,) = torch.autograd.grad(m.sum(), alpha)
            idx = (which[:, None], g_rows[None, :], point[:, None])
            metric[idx] = m.detach().view(len(chunk), len(samples)).to("cpu", torch.float64)
            grad[idx] = g.detach().to("cpu", torch.float64)
    return metric, grad


def component_paths(model, task, components: Sequence[Component], direction: str = "denoising",
                    n_steps: int = 50, max_batch_rows: int = 1024, runner: Runner | None = None,
                    show_progress: bool = False) -> list[ComponentPath]:
    """Paths of the given components (any mix of heads and neurons), in the order given; the
    components of one layer and kind share their batched passes."""
    kinds = list({c.kind: c.spec for c in components}.values())
    if runner is None or not {k.name for k in kinds} <= {k.name for k in runner.kinds}:
        runner = Runner(model, task, direction, kinds)
    groups: dict[tuple[str, int], list[int]] = {}
    for c in components:
        groups.setdefault((c.kind, c.layer), [])
        if c.unit not in groups[(c.kind, c.layer)]:
            groups[(c.kind, c.layer)].append(c.unit)
    found: dict[str, ComponentPath] = {}
    with progress_bar(len(groups), f"path {direction}", show_progress) as bar:
        for (kind_name, layer), units in groups.items():
            for path in unit_paths(runner, KINDS[kind_name], layer, units, n_steps, max_batch_rows):
                found[f"{kind_name}:{path.component}"] = path
            bar.update(1)
    return [found[f"{c.kind}:{c.label}"] for c in components]


# -- all heads (or neurons) against exact patching -------------------------------------------------
def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two ``[m]`` vectors (NaN if either is constant), in float64."""
    return float(correlation.pearson(x.double(), y.double()))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (ties share their mean rank) of two ``[m]`` vectors."""
    return float(correlation.spearman(x.double(), y.double()))


@dataclass
class PathSurvey:
    """Path summaries of every unit of a kind next to its exact patching score.

    paths: one :class:`ComponentPath` per unit, layer-major. ap: ``[n, n_layers, n_units]``
    per-sample scores of the ``ap`` method (computed by it, independently of the paths).
    rows: one dict per unit (means over samples). correlations: Pearson and Spearman
    correlations, over units, of grad_range and output_range with the mean ap score and with
    its absolute value.
    """

    kind: str
    direction: str
    paths: list[ComponentPath]
    ap: torch.Tensor
    rows: list[dict]
    correlations: dict[str, float]


@dataclass(frozen=True)
class SurveySettings:
    """How a survey runs and summarises: ``n_steps`` Gauss-Legendre steps, at most
    ``max_batch_rows`` rows per pass; split IG at fraction ``r`` of the output range; saturated
    where |dm/dalpha| < ``threshold`` x its maximum (:meth:`ComponentPath.summary`)."""

    n_steps: int = 20
    max_batch_rows: int = 1024
    r: float = 0.5
    threshold: float = 0.1


def survey(model, task, direction: str = "denoising", kind: str = "heads",
           settings: SurveySettings = SurveySettings(), *, runner: Runner | None = None,
           show_progress: bool = False,
           checkpoint: Checkpoint | NoCheckpoint = NO_CHECKPOINT) -> PathSurvey:
    """Paths of every unit of ``kind`` in every layer (one batched set of passes per layer) and
    the correlation of their gradient and output ranges with exact patching scores.

    ``checkpoint`` (:mod:`attrscope.checkpoint`) keeps each finished layer of paths, and the
    ``ap`` scores' chunks, so an interrupted survey resumes where it stopped."""
    from ..api import attribute

    n_steps, max_batch_rows = settings.n_steps, settings.max_batch_rows
    the_kind = KINDS[kind] if isinstance(kind, str) else kind
    if runner is None or the_kind.name not in {k.name for k in runner.kinds}:
        runner = Runner(model, task, direction, [the_kind])
    ap = attribute(model, task, "ap", direction, the_kind.name, runner=runner,
                   show_progress=show_progress, max_batch_rows=max_batch_rows,
                   checkpoint=checkpoint)[the_kind.name]
    n_layers = int(model.cfg.n_layers)
    units = list(range(the_kind.n_units(config_of(model))))
    paths: list[ComponentPath] = []

    def one_layer(layer: int) -> dict[str, torch.Tensor]:
        metric, grad = unit_path_tensors(runner, the_kind, layer, units, n_steps, max_batch_rows)
        return {"metric": metric, "grad": grad}

    with progress_bar(n_layers, f"path survey {direction}", show_progress) as bar:
        for layer in range(n_layers):
            # named apart from the ap chunks ("heads.layer0") kept in the same checkpoint
            found = checkpoint.chunk(f"path.{the_kind.name}.layer{layer}", lambda: one_layer(layer))
            paths.extend(as_paths(the_kind, layer, units, direction, n_steps, found["metric"],
                                  found["grad"]))
            bar.update(1)
    rows = []
    for path in paths:
        row = path.summary(settings.r, settings.threshold)
        row["ap_score"] = float(ap[:, path.layer, path.unit].mean())
        rows.append(row)
    score = torch.tensor([row["ap_score"] for row in rows], dtype=torch.float64)
    correlations = {}
    for quantity in ("grad_range", "output_range"):
        values = torch.tensor([row[quantity] for row in rows], dtype=torch.float64)
        correlations[f"pearson({quantity}, ap_score)"] = pearson(values, score)
        correlations[f"pearson({quantity}, |ap_score|)"] = pearson(values, score.abs())
        correlations[f"spearman({quantity}, ap_score)"] = spearman(values, score)
        correlations[f"spearman({quantity}, |ap_score|)"] = spearman(values, score.abs())
    return PathSurvey(the_kind.name, direction, paths, ap, rows, correlations)


__all__ = ["Component", "ComponentPath", "PathSurvey", "SurveySettings", "parse_component", "component_paths",
           "unit_paths", "survey", "split_ig", "split_point", "saturation", "path_points",
           "pearson", "spearman"]
