"""Normalised scores: every score as a fraction of the clean - corrupted metric gap.

``gap_i = metric(clean_i) - metric(corrupted_i)`` is read from the metrics every result records
(``extras["metric.run"]`` and ``extras["metric.source"]``: the clean prompt is the source when
denoising and the run when noising). The gap is taken clean minus corrupted in *both* directions,
so normalising keeps the sign conventions: a denoising score of 1 restores the whole gap, a
noising score of -1 removes it.

- ``"gap"``: each sample's scores are divided by its own gap;
- ``"gap-batch"``: every score is divided by the batch's mean gap
  (``mean(clean) - mean(corrupted)``), as the seed tutorials' normalised IOI metric does.

**Floor.** A gap near zero would turn noise into huge fractions (the seed study divided by such
gaps). The floor is ``gap_floor`` (default 0.05) times the batch's mean ``|gap_i|``: with
``"gap"`` every sample with ``|gap_i|`` below it, with ``"gap-batch"`` a batch whose mean gap is
below it (its samples' gaps cancel), is *refused* (``ValueError`` naming the samples) or, with
``small_gap="flag"``, *flagged*: that sample's (the batch's) scores become NaN and are listed in
``meta["normalize"]["small_gap_samples"]``. :meth:`attrscope.scores.Scores.mean` leaves NaN
samples out. Samples with a negative gap (the corruption raises the metric) are divided as they
are and listed in ``meta["normalize"]["negative_gap_samples"]``.

**No gap at all.** The floor above is relative to the batch's own gaps, so it cannot see a task
whose every gap is float noise (clean and corrupted prompts that give the same metric). An
absolute floor relative to the metric's scale catches that: when the mean ``|gap_i|`` is at most
NOISE_FLOOR (1e-4) times the metric's scale (the mean over samples of ``max(|metric(clean_i)|,
|metric(corrupted_i)|)``) the task has no gap to normalise by, and normalising is refused
(:class:`NoGapError`) whatever ``small_gap`` says; the per-sample floor is never below it.
:func:`attrscope.attribute` makes this check on the unpatched metrics, before the method runs.
"""

from __future__ import annotations

import torch
from jaxtyping import Float

NORMALIZE_MODES = ("gap", "gap-batch")
SMALL_GAP = ("refuse", "flag")
GAP_FLOOR = 0.05  # fraction of the batch's mean |gap|
# Fraction of the metric's own scale below which a gap is float noise, not a difference: float32
# rounding of a metric is ~1e-7 of its size, a real gap is orders of magnitude above 1e-4 of it.
NOISE_FLOOR = 1e-4


class NoGapError(ValueError):
    """A task whose clean and corrupted prompts give the same metric up to float noise."""


def check_normalize(mode: str | None, gap_floor: float = GAP_FLOOR,
                    small_gap: str = "refuse") -> None:
    """Refuse an unknown ``normalize``/``small_gap`` or a negative floor before any run."""
    if mode is not None and mode not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {list(NORMALIZE_MODES)} or None, got {mode!r}.")
    if small_gap not in SMALL_GAP:
        raise ValueError(f"small_gap must be one of {list(SMALL_GAP)}, got {small_gap!r}.")
    if not gap_floor >= 0:
        raise ValueError(f"gap_floor must be >= 0 (a fraction of the mean |gap|), got {gap_floor!r}.")


def metric_gap(scores) -> torch.Tensor:
    """``[n]`` metric(clean) - metric(corrupted) per sample, from the recorded metrics."""
    missing = [k for k in ("metric.run", "metric.source") if k not in scores.extras]
    if missing:
        raise ValueError(f"These scores do not record {missing}; results written by attrscope "
                         "record them (re-run the method to normalise).")
    run, source = scores.extras["metric.run"].double(), scores.extras["metric.source"].double()
    if scores.direction == "denoising":
        return source - run
    if scores.direction == "noising":
        return run - source
    raise ValueError(f"Cannot normalise scores of direction {scores.direction!r}.")


def noise_floor(run: Float[torch.Tensor, " n"], source: Float[torch.Tensor, " n"]) -> float:
    """NOISE_FLOOR times the metric's scale: the mean over samples of the larger of
    ``|run_i|``, ``|source_i|`` (``[n]`` metrics of the run and source prompts)."""
    scale = torch.maximum(run.double().abs(), source.double().abs()).mean()
    return NOISE_FLOOR * float(scale)


def check_has_gap(run: Float[torch.Tensor, " n"], source: Float[torch.Tensor, " n"],
                  task: str) -> float:
    """Refuse (:class:`NoGapError`) a task whose mean ``|gap|`` between the ``[n]`` unpatched
    metrics of the run and source prompts is float noise (module docstring); returns the
    noise floor."""
    noise = noise_floor(run, source)
    mean_gap = float((source.double() - run.double()).abs().mean())
    if not mean_gap > noise:
        raise NoGapError(
            f"Cannot normalise by the metric gap: task {task} has no gap to normalise by (its "
            f"clean and corrupted prompts give the same metric: mean |clean - corrupted| "
            f"{mean_gap:.3g}, at most {NOISE_FLOOR:g} x the metric's scale "
            f"{noise / NOISE_FLOOR:.3g}, i.e. float noise). Check that the corrupted prompts "
            "really differ where the metric reads, or leave normalize unset.")
    return noise


def normalized(scores, mode: str = "gap", gap_floor: float = GAP_FLOOR,
               small_gap: str = "refuse"):
    """A new Scores (of ``scores``' own type) whose values are ``scores``' divided by the metric
    gap (module docstring)."""
    check_normalize(mode, gap_floor, small_gap)
    if mode is None:
        return scores
    if "normalize" in scores.meta:
        raise ValueError("These scores are normalised already "
                         f"({scores.meta['normalize']['mode']!r}).")
    gap = metric_gap(scores)  # [n]
    task = scores.meta.get("task")
    noise = check_has_gap(scores.extras["metric.run"], scores.extras["metric.source"],
                          task.get("name", "?") if isinstance(task, dict) else str(task))
    floor = max(gap_floor * float(gap.abs().mean()), noise)
    divisor = gap if mode == "gap" else gap.mean().expand_as(gap)  # [n]
    small = divisor.abs() < floor if floor > 0 else divisor == 0
    small_ids = [int(i) for i in torch.nonzero(small).flatten()]
    if small_ids and small_gap == "refuse":
        what = (f"sample(s) {small_ids} have |clean - corrupted|" if mode == "gap" else
                f"the batch has a mean gap {float(divisor[0]):+.3g},")
        raise ValueError(f"Cannot normalise by the metric gap: {what} below the floor {floor:.3g} (the larger of {gap_floor} x mean |gap| {gap.abs().mean():.3g} and the noise floor {noise:.3g})"
                         "; pass small_gap='flag' to give them NaN scores instead, or a smaller "
                         "gap_floor.")
    divisor = torch.where(small, torch.full_like(divisor, float("nan")), divisor)
    values = {kind: (v.double() / divisor.view(-1, *([1] * (v.dim() - 1)))).to(v.dtype)
              for kind, v in scores.values.items()}
    info = {"mode": mode, "gap_floor": gap_floor, "floor": floor, "small_gap": small_gap,
            "mean_gap": float(gap.mean()), "mean_abs_gap": float(gap.abs().mean()),
            "small_gap_samples": small_ids,
            "negative_gap_samples": [int(i) for i in torch.nonzero(gap < 0).flatten()],
            "unit": "fraction of the clean - corrupted metric gap (extras are not normalised)"}
    extras = {**scores.extras, "normalize.gap": gap.float()}
    return type(scores)(values=values, meta={**scores.meta, "normalize": info}, extras=extras)


def describe(meta: dict) -> str | None:
    """One line saying how the scores were normalised, or None (for reports)."""
    info = meta.get("normalize")
    if not info:
        return None
    line = (f"normalised ({info['mode']}): scores are fractions of the clean - corrupted gap "
            f"(mean gap {info['mean_gap']:+.3f}); floor {info['floor']:.3g}")
    if info["small_gap_samples"]:
        line += f"; flagged (NaN) sample(s) {info['small_gap_samples']}"
    if info["negative_gap_samples"]:
        line += f"; negative gap in sample(s) {info['negative_gap_samples']}"
    return line
