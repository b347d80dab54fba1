"""Agreement between two results of the same component kind.

Every statistic reads two :class:`~attrscope.scores.Scores` for the same task (same samples, same
model) and one kind, flattened to ``[n_samples, n_components]`` with components ordered
layer-major (component ``c`` is layer ``c // n_units``, unit ``c % n_units``, printed ``L.U``).

- correlations (Pearson and Spearman) three ways: *per sample* (across components within each
  sample, then averaged over samples), *pooled* (over every (sample, component) pair) and *of
  means* (across components of the per-component mean over samples); each with a percentile
  bootstrap confidence interval that resamples samples (prompts);
- top-k overlap: Jaccard index per sample of the two methods' top-k components by |score| over
  all components of the kind. Components scored exactly 0 are never selected, so a sample where
  both methods score everything 0 has an empty union: its Jaccard index is undefined (NaN),
  excluded from the mean and counted, never counted as perfect agreement;
- Bland-Altman statistics of the per-component mean scores, each method's means first divided by
  its own largest |mean| (so both lie in [-1, 1] and the largest component of each is +-1);
- disagreements: components in one method's top k whose rank in the other is below k.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ..scores import Scores

Z_95 = 1.959963984540054  # two-sided 95 % normal quantile, for Bland-Altman limits


def flat_scores(scores: Scores, kind: str) -> torch.Tensor:
    """``[n_samples, n_layers * n_units]`` float64 scores of ``kind``, layer-major."""
    values = scores[kind]
    return values.reshape(values.shape[0], -1).double()


def component_labels(n_layers: int, n_units: int | None = None) -> list[str]:
    """``L.U`` labels in the layer-major order of :func:`flat_scores`; with one size (edges,
    which have no layer axis), ``0.U`` for its ``n_layers`` units."""
    if n_units is None:
        n_layers, n_units = 1, n_layers
    return [f"{layer}.{unit}" for layer in range(n_layers) for unit in range(n_units)]


def check_comparable(a: Scores, b: Scores, kind: str) -> None:
    """Refuse pairs that do not score the same components on the same samples."""
    for name, s in (("first", a), ("second", b)):
        if kind not in s:
            raise ValueError(f"The {name} result ({s.method} {s.direction}) has no {kind!r} "
                             f"scores; it has {s.kinds}.")
    if a[kind].shape != b[kind].shape:
        raise ValueError(f"{kind} scores have different shapes: {a.method} {a.direction} "
                         f"{tuple(a[kind].shape)} vs {b.method} {b.direction} {tuple(b[kind].shape)}.")
    task_a, task_b = a.meta.get("task"), b.meta.get("task")
    if task_a is not None and task_b is not None and task_a != task_b:
        raise ValueError(f"The results are for different tasks: {task_a} vs {task_b}.")
    model_a, model_b = a.meta.get("model"), b.meta.get("model")
    if model_a is not None and model_b is not None and model_a != model_b:
        raise ValueError(f"The results are for different models: {model_a} vs {model_b}.")


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis: ``[..., m], [..., m] -> [...]``; NaN where
    either side is constant."""
    xc = x - x.mean(dim=-1, keepdim=True)
    yc = y - y.mean(dim=-1, keepdim=True)
    denom = (xc.pow(2).sum(-1) * yc.pow(2).sum(-1)).sqrt()
    r = (xc * yc).sum(-1) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) along the last axis, ties given the mean of the ranks they span:
    ``[..., m] -> [..., m]``."""
    m = x.shape[-1]
    sorted_x, order = torch.sort(x, dim=-1, stable=True)
    position = torch.arange(1, m + 1, dtype=torch.float64, device=x.device).expand_as(sorted_x)
    new_run = torch.ones_like(sorted_x, dtype=torch.bool)
    new_run[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    run_id = new_run.long().cumsum(dim=-1) - 1  # [..., m], index of each element's tie run
    first = torch.zeros_like(position).scatter_reduce(-1, run_id, position, "amin", include_self=False)
    last = torch.zeros_like(position).scatter_reduce(-1, run_id, position, "amax", include_self=False)
    mean_rank_sorted = ((first + last) / 2).gather(-1, run_id)
    return torch.empty_like(mean_rank_sorted).scatter_(-1, order, mean_rank_sorted)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation along the last axis (Pearson of average ranks)."""
    return pearson(average_ranks(x), average_ranks(y))


def bootstrap_weights(n_samples: int, n_boot: int, seed: int) -> torch.Tensor:
    """``[n_boot, n_samples]`` float64: how many times each sample is drawn in each bootstrap
    resample (``n_samples`` draws with replacement)."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n_samples, (n_boot, n_samples), generator=generator)
    counts = torch.zeros(n_boot, n_samples, dtype=torch.float64)
    return counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))


def percentile_interval(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values`` ``[B]`` (NaN resamples left out)."""
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    q = torch.quantile(values.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(q[0]), float(q[1])


def weighted_pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis with non-negative weights ``w`` (bootstrap
    multiplicities), all broadcast to ``[..., m]`` -> ``[...]``; NaN where a side is constant."""
    total = w.sum(-1, keepdim=True)
    xc = x - (w * x).sum(-1, keepdim=True) / total
    yc = y - (w * y).sum(-1, keepdim=True) / total
    denom = ((w * xc * xc).sum(-1) * (w * yc * yc).sum(-1)).sqrt()
    r = (w * xc * yc).sum(-1) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def pooled_rank_matrix(x: torch.Tensor) -> torch.Tensor:
    """``[n, C] -> [n, n*C]``: entry (j, e) = the number of row j's values below pooled element
    e plus half the number equal to it. For resample multiplicities ``w`` ``[n]``, ``w @ M`` is
    every element's mid-rank in the resampled pool up to a constant shift, so bootstrapping the
    pooled Spearman correlation needs no sorting per resample."""
    sorted_rows = torch.sort(x, dim=-1).values.contiguous()
    pooled = x.flatten().expand(x.shape[0], -1).contiguous()
    below = torch.searchsorted(sorted_rows, pooled, right=False)
    upto = torch.searchsorted(sorted_rows, pooled, right=True)
    return (below + upto).double() / 2


def pooled_bootstrap_direct(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                            ranked: bool, chunk: int = 16) -> torch.Tensor:
    """Pooled (Spearman if ``ranked``, else Pearson) correlation of every resample, element by
    element: ``x, y [n, C]``, ``weights [B, n]`` -> ``[B]``. Memory O(chunk * n * C); the
    straightforward version of :func:`pooled_bootstrap`."""
    c = x.shape[1]
    if ranked:
        mx, my = pooled_rank_matrix(x), pooled_rank_matrix(y)
    out = []
    for i in range(0, weights.shape[0], chunk):
        w = weights[i:i + chunk]  # [b, n]
        per_element = w.repeat_interleave(c, dim=1)  # [b, n*C]
        if ranked:
            out.append(weighted_pearson(w @ mx, w @ my, per_element))
        else:
            out.append(weighted_pearson(x.flatten(), y.flatten(), per_element))
    return torch.cat(out)


def _pearson_from_moments(count, sx, sy, sxx, syy, sxy) -> torch.Tensor:
    denom = ((count * sxx - sx * sx) * (count * syy - sy * sy)).sqrt()
    r = (count * sxy - sx * sy) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def pooled_bootstrap(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                     ranked: bool) -> torch.Tensor:
    """Pooled correlation of every resample from per-sample moments, without touching every
    element per resample: ``x, y [n, C]``, ``weights [B, n]`` -> ``[B]``.

    Pearson: weighted sums of each sample's sums of x, y, x^2, y^2, xy (data centred first).
    Spearman: an element's resampled mid-rank is ``sum_j w_j M[j, e]``
    (:func:`pooled_rank_matrix`), so the weighted rank moments are cubic forms in ``w`` over
    tensors ``T[i, j, k] = sum_{e in sample i} M[j, e] M'[k, e]`` of size ``n^3``; used for
    n <= 128, above which :func:`pooled_bootstrap_direct` is used.
    """
    n, c = x.shape
    count = c * weights.sum(-1)
    if not ranked:
        xc, yc = x - x.mean(), y - y.mean()
        moments = [weights @ m for m in (xc.sum(1), yc.sum(1), (xc * xc).sum(1),
                                         (yc * yc).sum(1), (xc * yc).sum(1))]
        return _pearson_from_moments(count, *moments)
    if n > 128:
        return pooled_bootstrap_direct(x, y, weights, ranked)
    mx = pooled_rank_matrix(x).view(n, n, c)  # [j, i, c]: row j's counts for sample i's elements
    my = pooled_rank_matrix(y).view(n, n, c)
    w = weights

    def linear(m):  # sum_e w_row(e) R(e) = sum_ij w_i w_j A[i, j]
        return ((w @ m.sum(-1)) * w).sum(-1)

    def cubic(m1, m2):  # sum_e w_row(e) R1(e) R2(e)
        t = torch.bmm(m1.transpose(0, 1), m2.transpose(0, 1).transpose(1, 2))  # [i, j, k]
        wk = (w @ t.reshape(n * n, n).T).view(-1, n, n)  # [b, i, j]
        return ((wk * w[:, None, :]).sum(-1) * w).sum(-1)

    return _pearson_from_moments(count, linear(mx), linear(my), cubic(mx, mx), cubic(my, my),
                                 cubic(mx, my))


def weighted_nanmean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [n]`` ignoring NaN, weighted by each row of ``weights [B, n]`` -> ``[B]``."""
    w = weights * (~torch.isnan(values))
    return (w @ torch.nan_to_num(values)) / w.sum(-1)


@dataclass
class Estimate:
    """A statistic with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def correlations(a: torch.Tensor, b: torch.Tensor, n_boot: int, seed: int,
                 level: float = 0.95) -> dict[str, Estimate]:
    """Pearson and Spearman correlations of ``a``, ``b`` ``[n, C]`` per sample, pooled and of
    means, each with a percentile bootstrap interval over resampled samples (the same resamples
    for every statistic). Keys ``"<pearson|spearman>_<per_sample|pooled|of_means>"``."""
    n = a.shape[0]
    weights = bootstrap_weights(n, n_boot, seed)
    out: dict[str, Estimate] = {}
    for name, corr in (("pearson", pearson), ("spearman", spearman)):
        per_sample = corr(a, b)  # [n]
        out[f"{name}_per_sample"] = Estimate(
            float(per_sample.nanmean()),
            *percentile_interval(weighted_nanmean(per_sample, weights), level))
        out[f"{name}_pooled"] = Estimate(
            float(corr(a.flatten(), b.flatten())),
            *percentile_interval(pooled_bootstrap(a, b, weights, name == "spearman"), level))
        out[f"{name}_of_means"] = Estimate(
            float(corr(a.mean(0), b.mean(0))),
            *percentile_interval(_of_resampled_means(corr, a, b, weights), level))
    return out


def _of_resampled_means(corr, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor,
                        block: int = 64) -> torch.Tensor:
    """``corr`` of the resampled means of ``a``, ``b`` ``[n, C]`` for each resample of
    ``weights`` ``[B, n]`` -> ``[B]``, ``block`` resamples at a time: ``[B, C]`` means of every
    resample at once took gigabytes at 131,072 components."""
    n = a.shape[0]
    return torch.cat([corr((w @ a) / n, (w @ b) / n) for w in weights.split(block)])


def top_k_count(k: int | float, n_components: int) -> int:
    """``k`` components, or a fraction ``0 < k < 1`` of them (at least one)."""
    if isinstance(k, float) and 0 < k < 1:
        return max(1, round(k * n_components))
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer or a fraction in (0, 1), got {k!r}.")
    return min(int(k), n_components)


def top_k_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[n, C] -> [n, C]`` bool: each row's k largest |x|, leaving out exact zeros."""
    mask = torch.zeros_like(x, dtype=torch.bool)
    index = x.abs().topk(k, dim=-1).indices
    mask.scatter_(-1, index, True)
    return mask & (x != 0)


def jaccard(mask_a: torch.Tensor, mask_b: torch.Tensor) -> torch.Tensor:
    """Per-row Jaccard index ``|A & B| / |A | B|`` of ``[n, C]`` masks -> ``[n]``; NaN where the
    union is empty (undefined, not perfect agreement)."""
    inter = (mask_a & mask_b).sum(-1).double()
    union = (mask_a | mask_b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def max_abs_scaled(x: torch.Tensor) -> torch.Tensor:
    """``x / max |x|`` (unchanged if all zero)."""
    peak = x.abs().max()
    return x / peak if peak > 0 else x.clone()


def bland_altman(a_mean: torch.Tensor, b_mean: torch.Tensor) -> dict[str, object]:
    """Bland-Altman statistics of two ``[C]`` per-component mean scores, each divided by its own
    max |.| first. Returns bias (mean of a - b), sd of the differences, the 95 % limits of
    agreement, and the plotted points ``average``/``difference`` ``[C]``."""
    a_s, b_s = max_abs_scaled(a_mean), max_abs_scaled(b_mean)
    diff, avg = a_s - b_s, (a_s + b_s) / 2
    bias, sd = float(diff.mean()), float(diff.std(unbiased=True)) if diff.numel() > 1 else 0.0
    return {"scaling": "each method's per-component mean score divided by its own max |mean|",
            "bias": bias, "sd": sd, "lower_limit": bias - Z_95 * sd,
            "upper_limit": bias + Z_95 * sd,
            "outside_limits": int(((diff < bias - Z_95 * sd) | (diff > bias + Z_95 * sd)).sum()),
            "average": avg, "difference": diff}


def abs_ranks(x: torch.Tensor) -> torch.Tensor:
    """Rank of each entry of ``[C]`` by |x|, 1 = largest (ties by position)."""
    order = torch.argsort(x.abs(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, x.numel() + 1)
    return ranks


def disagreements(a_mean: torch.Tensor, b_mean: torch.Tensor, labels: list[str], k: int,
                  limit: int = 10) -> list[dict[str, object]]:
    """Components in the top ``k`` (by |mean score|) of one method and not of the other, largest
    rank gap first, with both mean scores and both ranks."""
    rank_a, rank_b = abs_ranks(a_mean), abs_ranks(b_mean)
    flagged = ((rank_a <= k) & (rank_b > k)) | ((rank_b <= k) & (rank_a > k))
    rows = [{"component": labels[c], "score_a": float(a_mean[c]), "score_b": float(b_mean[c]),
             "rank_a": int(rank_a[c]), "rank_b": int(rank_b[c]),
             "high_in": "a" if rank_a[c] < rank_b[c] else "b"}
            for c in torch.nonzero(flagged).flatten().tolist()]
    rows.sort(key=lambda r: -abs(r["rank_a"] - r["rank_b"]))
    return rows[:limit]


def agreement(a: Scores, b: Scores, kind: str, k: int | float = 10, n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> dict[str, object]:
    """Every agreement statistic of ``a`` and ``b`` on ``kind`` (see the module docstring)."""
    check_comparable(a, b, kind)
    x, y = flat_scores(a, kind), flat_scores(b, kind)
    labels = a.labels(kind)
    # only components both score for every sample (screened ap leaves unverified ones NaN)
    scored = ~(x.isnan() | y.isnan()).any(0)
    if not scored.all():
        x, y = x[:, scored], y[:, scored]
        labels = [label for label, keep in zip(labels, scored.tolist()) if keep]
    n, n_components = x.shape
    top = top_k_count(k, n_components)
    per_sample_jaccard = jaccard(top_k_mask(x, top), top_k_mask(y, top))
    undefined = int(torch.isnan(per_sample_jaccard).sum())
    jac = Estimate(float(per_sample_jaccard.nanmean()) if undefined < n else float("nan"),
                   *percentile_interval(weighted_nanmean(
                       per_sample_jaccard, bootstrap_weights(n, n_boot, seed)), level))
    random_expectation = top / (2 * n_components - top)  # E|A&B| / E|A|B| for random sets
    return {
        "a": f"{a.method} {a.direction}", "b": f"{b.method} {b.direction}", "kind": kind,
        "n_samples": n, "n_components": n_components, "confidence_level": level,
        "unscored_components": int((~scored).sum()),
        "n_boot": n_boot,
        "correlations": correlations(x, y, n_boot, seed, level),
        "top_k": top,
        "jaccard_per_sample": per_sample_jaccard,
        "jaccard": jac,
        "jaccard_undefined_samples": undefined,
        "jaccard_random_sets": random_expectation,
        "bland_altman": bland_altman(x.mean(0), y.mean(0)),
        "disagreements": disagreements(x.mean(0), y.mean(0), labels, top),
    }
