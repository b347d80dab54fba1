"""CSV tables and PNG figures of path analyses and counterfactual searches (matplotlib, Agg)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

from .counterfactual import Counterfactual
from .path import ComponentPath, PathSurvey


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    rows = list(rows)
    columns = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def path_step_rows(paths: Sequence[ComponentPath]) -> list[dict]:
    """One row per component, sample and recorded alpha: metric and dm/dalpha."""
    rows = []
    for p in paths:
        for sample in range(p.metric.shape[0]):
            for k in range(len(p.alphas)):
                rows.append({"component": p.component, "kind": p.kind, "direction": p.direction,
                             "sample": sample, "alpha": float(p.alphas[k]),
                             "weight": float(p.weights[k]), "metric": float(p.metric[sample, k]),
                             "grad": float(p.grad[sample, k])})
    return rows


def plot_paths(paths: Sequence[ComponentPath], file: Path) -> Path:
    """Mean metric and mean dm/dalpha (over samples) against alpha, one line per component."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for p in paths:
        label = f"{p.kind[:-1]} {p.component}"
        top.plot(p.alphas.numpy(), p.metric.mean(0).numpy(), marker=".", label=label)
        bottom.plot(p.alphas.numpy(), p.grad.mean(0).numpy(), marker=".", label=label)
    direction = paths[0].direction if paths else ""
    top.set_ylabel("task metric")
    top.set_title(f"Only the component moves, {direction}: alpha=0 run, alpha=1 patched")
    bottom.set_ylabel("dm/dalpha (component-summed gradient)")
    bottom.set_xlabel("alpha")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file


def plot_survey(result: PathSurvey, file: Path) -> Path:
    """Gradient range and output range of every unit against its mean ap score."""
    plt = _pyplot()
    score = [row["ap_score"] for row in result.rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, quantity in zip(axes, ("grad_range", "output_range")):
        values = [row[quantity] for row in result.rows]
        ax.scatter(score, values, s=18)
        ranked = sorted(range(len(score)), key=lambda i: -abs(score[i]))[:5]
        for i in ranked:
            ax.annotate(result.rows[i]["component"], (score[i], values[i]), fontsize=8)
        r = result.correlations[f"pearson({quantity}, ap_score)"]
        ax.set_title(f"{quantity} vs ap score ({result.kind}, {result.direction}): Pearson r = {r:.2f}",
                     fontsize=9)
        ax.set_xlabel("mean exact patching score (ap)")
        ax.set_ylabel(f"mean {quantity}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file


def counterfactual_score_rows(result: Counterfactual) -> list[dict]:
    """One row per component of the target's kind: ap score with the found prompt (and with the
    standard corrupted prompt, when given)."""
    from ..components import ComponentKind

    rows = []
    n_layers, n_units = result.scores.shape
    for layer in range(n_layers):
        for unit in range(n_units):
            label = ComponentKind.label(layer, unit)
            row = {"component": label, "target": label == result.component,
                   "score_found": float(result.scores[layer, unit])}
            if result.standard_scores is not None:
                row["score_standard"] = float(result.standard_scores[layer, unit])
            rows.append(row)
    return rows


def counterfactual_summary(result: Counterfactual) -> dict:
    return {"component": result.component, "kind": result.kind, "direction": result.direction,
            "clean": result.clean, "found": result.corrupted, "answer": result.answer,
            "distractor": result.distractor, "score": result.score,
            "standard": result.standard or "", "standard_score": result.standard_score,
            "n_changed": result.n_changed,
            "changed_positions": " ".join(map(str, result.changed_positions)),
            "perplexity_clean": result.perplexity_clean, "perplexity_found": result.perplexity,
            "perplexity_ratio": result.perplexity_ratio, "metric_clean": result.metric_clean,
            "metric_found": result.metric_corrupted,
            **{f"setting.{k}": v for k, v in result.settings.items()}}


def plot_counterfactual(result: Counterfactual, file: Path, most: int = 32) -> Path:
    """Bar chart of the ap scores of the ``most`` components with the largest |score| (the
    target always included), found prompt next to the standard corruption."""
    plt = _pyplot()
    rows = counterfactual_score_rows(result)
    ranked = sorted(rows, key=lambda r: -max(abs(r["score_found"]), abs(r.get("score_standard", 0))))
    shown = ranked[:most]
    if not any(r["target"] for r in shown):
        shown = shown[:-1] + [r for r in rows if r["target"]]
    shown.sort(key=lambda r: tuple(int(x) for x in r["component"].split(".")))
    x = list(range(len(shown)))
    width = 0.4 if result.standard_scores is not None else 0.8
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(shown)), 4.5))
    ax.bar([i - width / 2 if result.standard_scores is not None else i for i in x],
           [r["score_found"] for r in shown], width, label="found counterfactual")
    if result.standard_scores is not None:
        ax.bar([i + width / 2 for i in x], [r["score_standard"] for r in shown], width,
               label="standard corruption")
    ax.set_xticks(x, [r["component"] for r in shown], rotation=90, fontsize=8)
    for i, r in enumerate(shown):
        if r["target"]:
            ax.get_xticklabels()[i].set_color("red")
            ax.get_xticklabels()[i].set_fontweight("bold")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_ylabel(f"ap score ({result.direction})")
    ax.set_title(f"target {result.kind[:-1]} {result.component}: {result.score:+.2f} with "
                 f"{result.n_changed} changed tokens, perplexity x{result.perplexity_ratio:.2f}",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)
    return file
