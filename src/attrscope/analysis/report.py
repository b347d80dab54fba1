"""Write a :class:`~attrscope.analysis.compare.Comparison` as a self-contained HTML report, the
same figures as PNG files, and CSV tables of every number in the report."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .agreement import component_labels  # noqa: E402
from ..components import KINDS
from .compare import Comparison, label  # noqa: E402
from .verify import top_components  # noqa: E402


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; reports are for sharing
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write_bytes(path, buffer.getvalue().encode())
    return path


def _fmt(x: object, digits: int = 3) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


# -- tables -----------------------------------------------------------------------------------
def correlation_rows(c: Comparison) -> list[dict]:
    return [{"a": a["a"], "b": a["b"], "kind": a["kind"], "statistic": name,
             "value": e.value, "ci_low": e.low, "ci_high": e.high,
             "confidence_level": a["confidence_level"], "n_boot": a["n_boot"]}
            for a in c.agreements for name, e in a["correlations"].items()]


def overlap_rows(c: Comparison) -> list[dict]:
    return [{"a": a["a"], "b": a["b"], "kind": a["kind"], "top_k": a["top_k"],
             "jaccard_mean_per_sample": a["jaccard"].value, "ci_low": a["jaccard"].low,
             "ci_high": a["jaccard"].high, "samples_undefined": a["jaccard_undefined_samples"],
             "n_samples": a["n_samples"], "random_sets_expectation": a["jaccard_random_sets"],
             "spearman_of_means": a["correlations"]["spearman_of_means"].value,
             "pearson_of_means": a["correlations"]["pearson_of_means"].value}
            for a in c.agreements]


def bland_altman_rows(c: Comparison) -> list[dict]:
    return [{"a": a["a"], "b": a["b"], "kind": a["kind"],
             **{k: v for k, v in a["bland_altman"].items() if k not in ("average", "difference")}}
            for a in c.agreements]


def disagreement_rows(c: Comparison) -> list[dict]:
    return [{"a": a["a"], "b": a["b"], "kind": a["kind"], **row}
            for a in c.agreements for row in a["disagreements"]]


def latent_rows(c: Comparison) -> list[dict]:
    """Every component's asymmetry with its interval, per method and kind, with the call
    (AND-like / OR-like / -) and, for patching methods, whether it is latent."""
    rows = []
    for kind, analysis in c.latent.items():
        labels = next(iter(c.of_kind(kind).results.values())).labels(kind)
        latent = {(m, e["component"]) for m, sets in analysis["latent"].items()
                  for which in sets.values() for e in which}
        calls = {(m, e["component"]): which.upper() + "-like"
                 for m, sets in analysis["calls"].items() for which, es in sets.items()
                 for e in es}
        for m, est in analysis["asymmetry"].items():
            for i, lab in enumerate(labels):
                rows.append({"kind": kind, "method": m, "component": lab,
                             "asymmetry": float(est["value"].flatten()[i]),
                             "ci_low": float(est["low"].flatten()[i]),
                             "ci_high": float(est["high"].flatten()[i]),
                             "call": calls.get((m, lab), "-" if m != analysis["detector"]
                                               else "(contrast only)"),
                             "latent": (m, lab) in latent})
    return rows


def verification_table(c: Comparison) -> list[dict]:
    return [{"kind": kind, **row} for kind, rows in c.verification.items() for row in rows]


def significant_asymmetry_rows(c: Comparison, limit: int = 40) -> list[dict]:
    """The most asymmetric components of each kind, for the report's table (all are in
    latent.csv): largest |asymmetry| of any method first."""
    return sorted(latent_rows(c), key=lambda r: -abs(r["asymmetry"]))[:limit]


def faithfulness_rows(c: Comparison) -> list[dict]:
    rows = []
    for (result, kind), curve in c.faithfulness.items():
        nan = [float("nan")] * len(curve["f"])
        for frac, size, f, low, high in zip(curve["fractions"], curve["sizes"], curve["f"],
                                            curve.get("f_low", nan), curve.get("f_high", nan)):
            rows.append({"result": result, "kind": kind, "fraction": frac, "components_kept": size,
                         "faithfulness": f, "ci_low": low, "ci_high": high, "cpr": curve["cpr"],
                         "cmd": curve["cmd"], "m_model": curve["m_model"],
                         "m_empty": curve["m_empty"]})
    return rows


def mean_score_rows(c: Comparison, kind: str) -> list[dict]:
    c = c.of_kind(kind)
    first = next(iter(c.results.values()))[kind]
    labels = component_labels(*first.shape[1:])
    columns = {label(*key): s.mean(kind).flatten().tolist() for key, s in c.results.items()}
    asym = {f"asymmetry {m}": v.flatten().tolist() for (m, kd), v in c.asymmetries.items()
            if kd == kind}
    columns.update(asym)
    return [{"component": lab, **{name: values[i] for name, values in columns.items()}}
            for i, lab in enumerate(labels)]


def jaccard_sample_rows(c: Comparison) -> list[dict]:
    return [{"a": a["a"], "b": a["b"], "kind": a["kind"], "sample": i, "jaccard": float(j)}
            for a in c.agreements for i, j in enumerate(a["jaccard_per_sample"].tolist())]


# -- figures ----------------------------------------------------------------------------------
def _methods_directions(c: Comparison) -> tuple[list[str], list[str]]:
    methods = list(dict.fromkeys(m for m, _ in c.results))
    directions = list(dict.fromkeys(d for _, d in c.results))
    return methods, directions


def heads_heatmaps(c: Comparison, kind: str = "heads"):
    """Layer x unit heatmaps of every method (rows) and direction (columns), one symmetric
    colour scale per method."""
    c = c.of_kind(kind)
    methods, directions = _methods_directions(c)
    fig, axes = plt.subplots(len(methods), len(directions), squeeze=False,
                             figsize=(3.6 * len(directions) + 1, 2.8 * len(methods)),
                             layout="constrained")
    for i, m in enumerate(methods):
        peak = max(float(c.results[(m, d)].mean(kind).abs().max()) for d in directions) or 1.0
        for j, d in enumerate(directions):
            ax = axes[i][j]
            image = ax.imshow(c.results[(m, d)].mean(kind).numpy(), cmap="RdBu_r", vmin=-peak,
                              vmax=peak, aspect="auto", interpolation="nearest")
            ax.set_title(f"{m} {d}", fontsize=9)
            ax.set_xlabel("head" if kind == "heads" else "neuron", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
        fig.colorbar(image, ax=list(axes[i]), shrink=0.8, label="mean score")
    fig.suptitle(f"Mean {kind} scores (one colour scale per method)", fontsize=10)
    return fig


def _pairs(c: Comparison, kind: str, direction: str) -> list[dict]:
    c = c.of_kind(kind)
    return [a for a in c.agreements
            if a["kind"] == kind and a["a"].split(" ")[1] == direction]


def scatter_figure(c: Comparison, kind: str, direction: str):
    c = c.of_kind(kind)
    pairs = _pairs(c, kind, direction)
    fig, axes = plt.subplots(1, len(pairs), squeeze=False, figsize=(3.6 * len(pairs), 3.4))
    for ax, a in zip(axes[0], pairs):
        ma, da = a["a"].split(" ")
        mb, db = a["b"].split(" ")
        x, y = c.results[(ma, da)].mean(kind).flatten(), c.results[(mb, db)].mean(kind).flatten()
        ax.scatter(x.numpy(), y.numpy(), s=6, alpha=0.6)
        lim = max(float(x.abs().max()), float(y.abs().max())) or 1.0
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.7, ls="--")
        corr = a["correlations"]
        ax.set_title(f"r={_fmt(corr['pearson_of_means'].value, 2)}  "
                     f"rho={_fmt(corr['spearman_of_means'].value, 2)}", fontsize=9)
        ax.set_xlabel(f"{ma} mean score", fontsize=8)
        ax.set_ylabel(f"{mb} mean score", fontsize=8)
    fig.suptitle(f"{kind}, {direction}: per-component mean scores", fontsize=10)
    fig.tight_layout()
    return fig


def bland_altman_figure(c: Comparison, kind: str, direction: str):
    c = c.of_kind(kind)
    pairs = _pairs(c, kind, direction)
    fig, axes = plt.subplots(1, len(pairs), squeeze=False, figsize=(3.6 * len(pairs), 3.4))
    for ax, a in zip(axes[0], pairs):
        ba = a["bland_altman"]
        ax.scatter(ba["average"].numpy(), ba["difference"].numpy(), s=6, alpha=0.6)
        for y, style in ((ba["bias"], "-"), (ba["lower_limit"], "--"), (ba["upper_limit"], "--")):
            ax.axhline(y, color="crimson", lw=0.8, ls=style)
        ax.set_title(f"{a['a'].split(' ')[0]} - {a['b'].split(' ')[0]}: bias "
                     f"{_fmt(ba['bias'], 2)}", fontsize=9)
        ax.set_xlabel("mean of the two (scaled)", fontsize=8)
        ax.set_ylabel("difference (scaled)", fontsize=8)
    fig.suptitle(f"Bland-Altman, {kind}, {direction} (each method / its max |mean|)", fontsize=10)
    fig.tight_layout()
    return fig


def asymmetry_figure(c: Comparison, kind: str = "heads"):
    c = c.of_kind(kind)
    items = [(m, v) for (m, kd), v in c.asymmetries.items() if kd == kind]
    fig, axes = plt.subplots(1, len(items), squeeze=False, figsize=(3.6 * len(items) + 1, 3.0),
                             layout="constrained")
    image = None
    for ax, (m, v) in zip(axes[0], items):
        image = ax.imshow(v.numpy(), cmap="PuOr", vmin=-1, vmax=1, aspect="auto",
                          interpolation="nearest")
        ax.set_title(f"{m}: |denoising| - |noising|", fontsize=9)
        ax.set_xlabel("head" if kind == "heads" else "neuron", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8,
                     label="asymmetry (<0 AND-like, >0 OR-like)")
    return fig


def faithfulness_figure(c: Comparison, kind: str):
    c = c.of_kind(kind)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (result, kd), curve in c.faithfulness.items():
        if kd != kind:
            continue
        ax.plot(curve["fractions"], curve["f"], marker="o", ms=3,
                label=f"{result} (CPR {curve['cpr']:.2f}, CMD {curve['cmd']:.2f})")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.7, ls="--")
    ax.set_xlabel(f"fraction of {kind} kept (top by |mean score|)")
    ax.set_ylabel("faithfulness f")
    ax.legend(fontsize=7)
    ax.set_title(f"Faithfulness, {kind} ({c.settings.get('ablation')} ablation)", fontsize=10)
    fig.tight_layout()
    return fig


def verification_figure(c: Comparison, kind: str):
    c = c.of_kind(kind)
    rows = [r for r in c.verification[kind] if r["source"] != "random"]
    nulls = {r["size"]: r for r in c.verification[kind] if r["source"] == "random"}
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.2), layout="constrained")
    y = range(len(rows))
    ax.barh(y, [nulls[r["size"]]["ci_high"] - nulls[r["size"]]["ci_low"] for r in rows],
            left=[nulls[r["size"]]["ci_low"] for r in rows], color="#cccccc")
    ax.errorbar([r["metric_change"] for r in rows], y, fmt="o", color="#3b6ea8", ms=3,
                xerr=[[r["metric_change"] - r["ci_low"] for r in rows],
                      [r["ci_high"] - r["metric_change"] for r in rows]])
    ax.set_yticks(list(y), [f"{r['set']} [{r['source']}]" for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel("mean metric change when ablated (clean run)", fontsize=8)
    ax.set_title(f"Verification by ablation, {kind}", fontsize=10)
    return fig


def figures(c: Comparison) -> list[tuple[str, str, object]]:
    """(file stem, caption, matplotlib figure) for every figure of the report."""
    _, directions = _methods_directions(c)
    out = []
    for kind in c.kinds:
        if kind == "heads":
            out.append(("heads_heatmaps", "Mean head scores, layer x head, every method and "
                        "direction (one colour scale per method).", heads_heatmaps(c)))
        for d in directions:
            if _pairs(c, kind, d):
                out.append((f"scatter_{kind}_{d}", f"{kind}, {d}: mean scores of each pair of "
                            "methods, with Pearson r and Spearman rho.", scatter_figure(c, kind, d)))
                out.append((f"bland_altman_{kind}_{d}", f"{kind}, {d}: Bland-Altman (bias line and "
                            "95 % limits of agreement).", bland_altman_figure(c, kind, d)))
        if any(kd == kind for _, kd in c.asymmetries):
            out.append((f"asymmetry_{kind}", f"Direction asymmetry of {kind} (negative = AND-like, "
                        "positive = OR-like).", asymmetry_figure(c, kind)))
        out.append((f"faithfulness_{kind}", f"Faithfulness curves of {kind} circuits.",
                    faithfulness_figure(c, kind)))
        if kind in c.verification:  # node kinds; edges are verified by circuit faithfulness
            out.append((f"verification_{kind}", f"Verification of {kind} by ablation; grey: the "
                        "middle 95 % of random sets of the same size; whiskers: 95 % interval "
                        "over prompts.", verification_figure(c, kind)))
    return out


# -- HTML -------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A sortable table (click a header)."""
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _details(title: str, body: str) -> str:
    """A section collapsed by default."""
    return f"<details><summary>{html.escape(title)}</summary>{body}</details>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1250px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0;cursor:pointer} th:hover{background:#e0e6f0}
details{margin:0.4em 0 0.8em} summary{cursor:pointer;font-weight:600}
#summary{background:#f6f8fb;border:1px solid #d5dce8;padding:0.5em 1.5em;border-radius:6px}
#summary li{margin:0.3em 0} .candidate{color:#8a5a00} .confirmed{color:#1d6b2f}
.rejected{color:#9b1c1c} pre{background:#f7f7f7;padding:1em;font-size:12px}
"""

# Click a header to sort by that column (numbers numerically), again to reverse.
_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.dataset.order !== 'asc';
    th.dataset.order = asc ? 'asc' : 'desc';
    var rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].textContent, y = b.cells[i].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def html_page(title: str, body: list[str], plotly_js: str | None = None) -> str:
    """A self-contained page: the report style, plotly.js embedded once (so it works offline;
    ``plotly_js`` default: the installed plotly's), the ``body`` parts and the script that sorts
    tables by a clicked header."""
    if plotly_js is None:
        from plotly.offline import get_plotlyjs

        plotly_js = get_plotlyjs()
    return "\n".join([f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
                      f"{html.escape(title)}</title>",
                      f"<style>{_STYLE}</style><script>{plotly_js}</script></head><body>",
                      *body, f"<script>{_SORT_JS}</script></body></html>"])


def _interval(e: dict, prefix: str = "") -> str:
    return (f"{e[prefix + ('value' if prefix else 'asymmetry')]:+.3f} "
            f"[{e[prefix + 'low']:+.3f}, {e[prefix + 'high']:+.3f}]")


def _latent_items(c: Comparison, kind: str) -> list[str]:
    c = c.of_kind(kind)
    analysis = c.latent.get(kind)
    if analysis is None:
        return [f"{kind}: no asymmetry (needs both directions)."]
    level, t = int(100 * analysis["level"]), analysis["threshold"]
    items = []
    for m, sets in analysis["calls"].items():
        called = [f"{w.upper()} {e['component']} {_interval(e)}" for w in ("and", "or")
                  for e in sets[w]]
        items.append(f"{kind}, {m}: {len(called)} component(s) called AND/OR-like"
                     + (f": {'; '.join(called[:8])}" + (" ..." if len(called) > 8 else "")
                        if called else ""))
    if analysis["detector"] is None:
        items.append(f"{kind}: no ig run, so no latent contrast.")
        return items
    for m, sets in analysis["latent"].items():
        found = [e for w in ("and", "or") for e in sets[w]]
        if found:
            items.append(f"<b>{kind}, latent components ({m} vs ig)</b>: " + "; ".join(
                f"{'AND' if e['asymmetry'] < 0 else 'OR'} {e['component']}: {m} {_interval(e)}, "
                f"ig {_interval(e, 'ig_')}, difference {e['contrast']:+.3f} "
                f"[{e['contrast_low']:+.3f}, {e['contrast_high']:+.3f}]" for e in found))
        else:
            closest = "; ".join(f"{e['component']}: {m} {_interval(e)}, ig {_interval(e, 'ig_')} "
                                f"({e['why']})" for e in analysis["closest"][m])
            items.append(f"<b>{kind} ({m} vs ig): no latent components found</b>. "
                         f"<span class='candidate'>Closest candidates, not findings: {closest}"
                         "</span>")
    items.append(f"<small>Called: {level} % interval over prompts excludes 0 and |asymmetry| >= "
                 f"{t:g} (share of the largest mean |score| of the kind); latent: called by "
                 "the patching method, and patching - ig asymmetry (paired bootstrap) is called "
                 "by the same rule with the same sign.</small>")
    return items


def agreed_components(c: Comparison, kind: str) -> list[str]:
    """Components in the top k of every result of ``kind`` (all methods, all directions)."""
    c = c.of_kind(kind)
    k = next((r["size"] for r in c.verification.get(kind, []) if r["set"].startswith("top ")
              and "not in" not in r["set"]), 10)
    tops = [[comp.label for comp in top_components(s, kind, k)] for s in c.results.values()]
    shared = set.intersection(*map(set, tops)) if tops else set()
    return [lab for lab in tops[0] if lab in shared] if tops else []


def _disagreement_items(c: Comparison, kind: str) -> list[str]:
    c = c.of_kind(kind)
    rows = [r for r in c.verification.get(kind, []) if "not in" in r["set"]]
    if not rows:
        return [f"{kind}: the methods' top sets do not disagree."]
    alpha = c.settings.get("alpha", 0.05)
    confirmed = [r for r in rows if r["p_value"] <= alpha]
    rejected = [r for r in rows if r["p_value"] > alpha]

    def item(r):
        return (f"{html.escape(r['source'])} {html.escape(r['set'])} "
                f"({html.escape(r['components'])}): {html.escape(r['verdict'])}")

    out = [f"<span class='confirmed'>{kind}, confirmed by ablation</span>: " + item(r)
           for r in confirmed]
    if rejected:
        out.append(f"<span class='rejected'>{kind}, {len(rejected)} disagreement set(s) "
                   "indistinguishable from random sets</span>: "
                   + "; ".join(f"{html.escape(r['source'])} {html.escape(r['set'])} "
                               f"({html.escape(r['components'])}, p = {r['p_value']:.2f})"
                               for r in rejected))
    return out


def ground_truth_rows(c: Comparison) -> list[dict]:
    """Precision/recall against the planted circuit when the model is ``attrscope-planted``."""
    from ..models import PLANTED_MODEL_NAME
    from .ground_truth import evaluate, load_ground_truth

    if c.info.get("model") != PLANTED_MODEL_NAME:
        return []
    return [r for r in evaluate(c, load_ground_truth()) if r["predicted"] or r["truth"]]


def _ground_truth_item(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["<b>Against the planted ground truth</b> (precision / recall): " + "; ".join(
        f"{r['kind']} {html.escape(r['who'])} {html.escape(r['what'])} "
        f"{_fmt(r['precision'], 2)} / {_fmt(r['recall'], 2)}" for r in rows)]


def summary_html(c: Comparison) -> str:
    """The findings section that opens the report."""
    items = _ground_truth_item(ground_truth_rows(c))
    for kind in c.kinds:
        agreed = agreed_components(c, kind)
        items.append(f"<b>{kind} that matter, agreed by every method and direction</b>: "
                     + (" ".join(agreed) or "none in common"))
        items += _disagreement_items(c, kind)
        items += _latent_items(c, kind)
        curves = [v for (r, kd), v in c.faithfulness.items() if kd == kind]
        if curves:
            cprs = [v["cpr"] for v in curves]
            widest = max((v["cpr_high"] - v["cpr_low"] for v in curves if "cpr_low" in v),
                         default=None)
            spread = (f" (95 % intervals over prompts up to {widest:.3f} wide)"
                      if widest is not None else "")
            items.append(f"Faithfulness of {kind} circuits: CPR {min(cprs):.3f}-{max(cprs):.3f} "
                         f"over {len(curves)} results{spread}. "
                         f"{html.escape(c.faithfulness_notes.get(kind, ''))}")
    failed = c.failed_samples
    n = (c.info.get("task") or {}).get("n")
    items.append(html.escape(_no_failure_threshold(c)) if _no_failure_threshold(c) else
                 f"Samples the model fails (clean metric <= 0): {len(failed)} of {n}" + (
        ": " + "; ".join(f"#{r['sample']} {html.escape(str(r['clean']))!s} -> "
                         f"{html.escape(str(r['answer']))} ({r['clean_metric']:+.2f})"
                         for r in failed[:10]) if failed else "."))
    body = "".join(f"<li>{i}</li>" for i in items)
    return f"<section id='summary'><h2>Findings</h2><ul>{body}</ul></section>"


def render_html(c: Comparison, plotly_js: str | None = None) -> str:
    """The report: findings first, then interactive figures and collapsed sortable tables.
    ``plotly_js``: the plotly.js source embedded once (default: the installed plotly's)."""
    from . import plots

    info, settings = c.info, c.settings
    methods, directions = _methods_directions(c)
    signs = "".join(f"<li><b>{html.escape(d)}</b>: {html.escape(str(s))}</li>"
                    for d, s in (info.get("sign_conventions") or {}).items())
    parts = [
        "<h1>attrscope: method comparison</h1>",
        summary_html(c),
        f"<p>Model <b>{html.escape(str(info.get('model')))}</b>, task "
        f"<b>{html.escape(str((info.get('task') or {}).get('name')))}</b> "
        f"({html.escape(str((info.get('task') or {}).get('n')))} prompt pairs). Metric: "
        f"{html.escape(str(info.get('metric')))}; mean on clean prompts "
        f"{info.get('clean_metric_mean', float('nan')):+.3f}.</p>",
        f"<ul>{signs}</ul>",
    ]
    if normalization(c):
        parts.append(f"<p>{html.escape(normalization(c))}.</p>")
    if c.reused:
        parts.append(f"<p>Reused cached results: {html.escape(', '.join(c.reused))}.</p>")
    parts.append("<h2>Scores</h2>")
    parts += [plots.score_heatmaps(c, kind, seed=settings.get("seed", 0)) for kind in c.kinds
              if kind in KINDS]  # layer x unit maps; edges have the circuit figure instead
    parts.append("<h2>Agreement</h2><p>Correlations are per sample, pooled and of the "
                 "per-component means, with percentile bootstrap intervals over prompts; Jaccard "
                 "is the per-sample overlap of the two top-k sets.</p>")
    parts += [plots.scatter_figure(c, kind, d) for kind in c.kinds for d in directions]
    parts.append(_details("Top-k overlap", _table(overlap_rows(c))))
    parts.append(_details("Correlations with intervals", _table(
        correlation_rows(c), ["a", "b", "kind", "statistic", "value", "ci_low", "ci_high"])))
    parts.append(_details("Bland-Altman (each method / its max |mean|)",
                          _table(bland_altman_rows(c))))
    parts.append(_details("Components one method ranks high and the other low",
                          _table(disagreement_rows(c))))
    parts.append("<h2>Direction asymmetry and latent components</h2><p>Asymmetry = mean over "
                 "prompts of |denoising score| - |noising score|, divided by the largest mean "
                 "|score| of either direction over the kind; bars: bootstrap interval over "
                 "prompts. Negative: AND-like; positive: OR-like. IG's asymmetry is the contrast "
                 "(latent = the patching method calls it, and calls patching - IG asymmetry "
                 "the same way), never a finding of its own.</p>")
    for kind, analysis in c.latent.items():
        labels = next(iter(c.of_kind(kind).results.values())).labels(kind)
        parts.append(plots.asymmetry_figure(analysis, labels))
        if analysis["detector"]:
            parts += [plots.contrast_figure(analysis, labels, m) for m in analysis["latent"]]
    parts.append(_details("Most asymmetric components (all in tables/latent.csv)",
                          _table(significant_asymmetry_rows(c))))
    parts.append(f"<h2>Verification by ablation</h2><p>Ablation: "
                 f"<b>{html.escape(str(settings.get('ablation')))}</b> in the clean run; each set "
                 "is compared with same-size random sets (all of them when there are few).</p>")
    parts += [plots.verification_figure(rows, kind) for kind, rows in c.verification.items()]
    parts.append(_details("Verification table", _table(verification_table(c), [
        "kind", "set", "source", "size", "metric_change", "ci_low", "ci_high", "null_mean",
        "null_sd", "p_value", "effect_size", "verdict", "components"])))
    parts.append("<h3>Faithfulness</h3><p>f = (m(circuit) - m(empty)) / (m(model) - m(empty)); "
                 "CPR = area under f, CMD = area under |1 - f| over the fraction kept. Bands and "
                 "intervals: percentile bootstrap over prompts, each resample recomputing "
                 "m(model), m(empty) and every m(circuit).</p>")
    parts += [f"<p>{html.escape(note)}</p>" for note in c.faithfulness_notes.values() if note]
    parts += [plots.faithfulness_figure(c, kind) for kind in c.kinds]
    cpr = [{"result": r, "kind": kd, "cpr": v["cpr"], "cpr_low": v.get("cpr_low"),
            "cpr_high": v.get("cpr_high"), "cmd": v["cmd"], "cmd_low": v.get("cmd_low"),
            "cmd_high": v.get("cmd_high"), "m_model": v["m_model"], "m_empty": v["m_empty"]}
           for (r, kd), v in c.faithfulness.items()]
    parts.append(_details("CPR and CMD", _table(cpr)))
    parts.append(_details("Settings and versions", "<pre>" + html.escape(json.dumps(
        {"settings": settings, "info": info}, indent=2, default=str)) + "</pre>"))
    return html_page("attrscope comparison", parts, plotly_js)


def write_report(c: Comparison, out: Path) -> dict[str, Path]:
    """Write ``report.html``, ``figures/*.png`` and ``tables/*.csv`` into ``out``; returns the
    main paths."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for stem, _, fig in figures(c):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        _atomic_write_bytes(out / "figures" / f"{stem}.png", buffer.getvalue())
    tables = {"correlations": correlation_rows(c), "overlap": overlap_rows(c),
              "jaccard_per_sample": jaccard_sample_rows(c), "bland_altman": bland_altman_rows(c),
              "disagreements": disagreement_rows(c), "latent": latent_rows(c),
              "verification": verification_table(c), "faithfulness": faithfulness_rows(c)}
    for kind in c.kinds:
        tables[f"mean_scores_{kind}"] = mean_score_rows(c, kind)
    for name, rows in tables.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    report = out / "report.html"
    _atomic_write_bytes(report, render_html(c).encode())
    return {"report": report, "figures": out / "figures", "tables": out / "tables"}


def normalization(c: Comparison) -> str | None:
    """How the compared scores were normalised (one line), or None."""
    from ..normalize import describe

    return describe(next(iter(c.results.values())).meta) if c.results else None


def summary_lines(c: Comparison) -> list[str]:
    """A short terminal summary: agreement, latent verdicts, verification verdicts, faithfulness."""
    lines = [normalization(c)] if normalization(c) else []
    lines.append("agreement (Spearman of means [95% CI]; Jaccard of top-k per sample):")
    for a in c.agreements:
        rho = a["correlations"]["spearman_of_means"]
        lines.append(f"  {a['kind']:<8} {a['a']:<16} vs {a['b']:<16} rho {rho.value:+.2f} "
                     f"[{rho.low:+.2f}, {rho.high:+.2f}]  Jaccard@{a['top_k']} "
                     f"{_fmt(a['jaccard'].value, 2)}")
    for kind, analysis in c.latent.items():
        lines.append(f"latent {kind} (called: interval excludes 0 and |asymmetry| >= "
                     f"{analysis['threshold']:g}; latent: called, and patching - ig called the same way):")
        for m, sets in analysis["calls"].items():
            called = " ".join(f"{w.upper()} {e['component']}" for w in ("and", "or")
                              for e in sets[w]) or "none"
            latent = analysis["latent"].get(m)
            found = " ".join(e["component"] for w in ("and", "or") for e in latent[w]) \
                if latent else ""
            verdict = (f"latent: {found}" if found else "no latent components found"
                       if latent is not None else "no ig run for the contrast")
            lines.append(f"  {m}: called {called[:120]}; {verdict}")
            for e in analysis["closest"].get(m, [])[:3] if not found else []:
                lines.append(f"    closest candidate {e['component']}: {m} {_interval(e)}, "
                             f"ig {_interval(e, 'ig_')} ({e['why']})")
    for kind, rows in c.verification.items():
        lines.append(f"verification {kind} (ablation vs same-size random sets):")
        for r in rows:
            if r["source"] != "random":
                lines.append(f"  {r['set']} [{r['source']}]: {r['metric_change']:+.3g} "
                             f"[{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]; {r['verdict']}")
    for (result, kind), curve in c.faithfulness.items():
        interval = (f" [{curve['cpr_low']:.3f}, {curve['cpr_high']:.3f}]" if "cpr_low" in curve
                    else "")
        lines.append(f"  faithfulness {kind:<8} {result:<16} CPR {curve['cpr']:.3f}{interval} "
                     f"CMD {curve['cmd']:.3f}")
    lines += [f"  {note}" for note in c.faithfulness_notes.values() if note]
    for r in ground_truth_rows(c):
        lines.append(f"  ground truth {r['kind']:<8} {r['who']:<16} {r['what']:<20} precision "
                     f"{_fmt(r['precision'], 2)} recall {_fmt(r['recall'], 2)}")
    lines.append(_no_failure_threshold(c) or
                 f"samples the model fails (clean metric <= 0): {len(c.failed_samples)}"
                 + (" (" + ", ".join(str(r["sample"]) for r in c.failed_samples[:20]) + ")"
                    if c.failed_samples else ""))
    return lines


def _no_failure_threshold(c) -> str:
    """A note when the comparison's metric has no failure threshold at zero (``kl``,
    ``answer_*``, a user metric), else ""."""
    from ..tasks.metrics import DIFFERENCE_METRICS

    metric = str(c.info.get("metric") or "")
    if not metric or any(metric.startswith(f"{name}:") for name in DIFFERENCE_METRICS):
        return ""
    return (f"Samples the model fails: not judged, the metric {metric.split(': ')[0]} has no "
            "threshold at zero.")
