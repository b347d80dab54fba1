"""Write a :class:`~attrscope.analysis.compare.Comparison` as a self-contained HTML report, the
same figures as PNG files, and CSV tables of every number in the report."""

from __future__ import annotations

import base64
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
from .compare import Comparison, label  # noqa: E402


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
    return [{"method": m, "kind": kind, "set": which.upper(), **entry}
            for (m, kind), sets in c.latent.items() for which in ("and", "or")
            for entry in sets[which]]


def verification_table(c: Comparison) -> list[dict]:
    return [{"kind": kind, **row} for kind, rows in c.verification.items() for row in rows]


def faithfulness_rows(c: Comparison) -> list[dict]:
    rows = []
    for (result, kind), curve in c.faithfulness.items():
        for frac, size, f in zip(curve["fractions"], curve["sizes"], curve["f"]):
            rows.append({"result": result, "kind": kind, "fraction": frac, "components_kept": size,
                         "faithfulness": f, "cpr": curve["cpr"], "cmd": curve["cmd"],
                         "m_model": curve["m_model"], "m_empty": curve["m_empty"]})
    return rows


def mean_score_rows(c: Comparison, kind: str) -> list[dict]:
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
    return [a for a in c.agreements
            if a["kind"] == kind and a["a"].split(" ")[1] == direction]


def scatter_figure(c: Comparison, kind: str, direction: str):
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
    rows = c.verification[kind]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.2), layout="constrained")
    names = [f"{r['set']} [{r['source']}]" if r["source"] != "random" else r["set"] for r in rows]
    errors = [0 if math.isnan(r["sd_over_random_sets"]) else r["sd_over_random_sets"] for r in rows]
    colours = ["#999999" if r["source"] == "random" else "#3b6ea8" for r in rows]
    ax.barh(range(len(rows)), [r["metric_change"] for r in rows], xerr=errors, color=colours)
    ax.set_yticks(range(len(rows)), names, fontsize=6)
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
        out.append((f"verification_{kind}", f"Verification of {kind} by ablation; grey: random "
                    "sets of the same size (bar: mean, whisker: sd over seeds).",
                    verification_figure(c, kind)))
    return out


# -- HTML -------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f0f0f0} figure{margin:1em 0} figcaption{font-size:13px;color:#444}
img{max-width:100%;border:1px solid #ddd} pre{background:#f7f7f7;padding:1em;font-size:12px}
"""


def render_html(c: Comparison, pngs: dict[str, bytes], captions: dict[str, str]) -> str:
    def figure(stem: str) -> str:
        data = base64.b64encode(pngs[stem]).decode()
        return (f'<figure><img class="figure" alt="{html.escape(stem)}" '
                f'src="data:image/png;base64,{data}"><figcaption>{html.escape(captions[stem])}'
                "</figcaption></figure>")

    info, settings = c.info, c.settings
    signs = "".join(f"<li><b>{html.escape(d)}</b>: {html.escape(str(s))}</li>"
                    for d, s in (info.get("sign_conventions") or {}).items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>attrscope comparison</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>attrscope: method comparison</h1>",
        f"<p>Model <b>{html.escape(str(info.get('model')))}</b>, task "
        f"<b>{html.escape(str((info.get('task') or {}).get('name')))}</b> "
        f"({html.escape(str((info.get('task') or {}).get('n')))} prompt pairs). Metric: "
        f"{html.escape(str(info.get('metric')))}; mean on clean prompts "
        f"{info.get('clean_metric_mean', float('nan')):+.3f}.</p>",
        f"<ul>{signs}</ul>",
    ]
    if c.reused:
        parts.append(f"<p>Reused cached results: {html.escape(', '.join(c.reused))}.</p>")
    parts.append("<h2>Scores</h2>")
    parts += [figure(s) for s in pngs if s == "heads_heatmaps"]
    parts.append("<h2>Agreement</h2><p>Correlations are per sample (across components, averaged "
                 "over samples), pooled (all sample x component pairs) and of the per-component "
                 "means, with percentile bootstrap intervals over samples. Jaccard is the overlap "
                 "of the two top-k sets (by |score|) per sample over all components of a kind, "
                 "averaged over samples where the union is not empty.</p>")
    parts.append(_table(overlap_rows(c)))
    parts.append(_table(correlation_rows(c), ["a", "b", "kind", "statistic", "value", "ci_low",
                                              "ci_high"]))
    parts += [figure(s) for s in pngs if s.startswith("scatter_")]
    parts.append("<h3>Bland-Altman</h3><p>Each method's per-component mean scores are divided by "
                 "that method's largest |mean score| before taking differences.</p>")
    parts.append(_table(bland_altman_rows(c)))
    parts += [figure(s) for s in pngs if s.startswith("bland_altman_")]
    parts.append("<h3>Components one method ranks high and the other low</h3>")
    parts.append(_table(disagreement_rows(c)))
    parts.append("<h2>Direction asymmetry and latent components</h2><p>Asymmetry = mean over "
                 "samples of |denoising score| - |noising score|, divided by the largest mean "
                 "|score| of either direction over the kind. Negative: AND-like (necessary, not "
                 "sufficient alone); positive: OR-like (sufficient alone, not necessary). Latent "
                 "sets: top components by |asymmetry|, split by sign.</p>")
    parts += [figure(s) for s in pngs if s.startswith("asymmetry_")]
    parts.append(_table(latent_rows(c)))
    parts.append(f"<h2>Verification by ablation</h2><p>Ablation: <b>{html.escape(str(settings.get('ablation')))}</b>"
                 " in the clean run; the number is the mean over samples of the metric change.</p>")
    parts.append(_table(verification_table(c), ["kind", "set", "source", "size", "metric_change",
                                                "sd_over_random_sets", "components"]))
    parts += [figure(s) for s in pngs if s.startswith("verification_")]
    parts.append("<h3>Faithfulness</h3><p>f = (m(circuit) - m(empty)) / (m(model) - m(empty)); "
                 "CPR = area under f, CMD = area under |1 - f| over the fraction kept.</p>")
    cpr = [{"result": r, "kind": kd, "cpr": v["cpr"], "cmd": v["cmd"], "m_model": v["m_model"],
            "m_empty": v["m_empty"]} for (r, kd), v in c.faithfulness.items()]
    parts.append(_table(cpr))
    parts += [figure(s) for s in pngs if s.startswith("faithfulness_")]
    parts.append("<h2>Settings and versions</h2><pre>"
                 + html.escape(json.dumps({"settings": settings, "info": info}, indent=2,
                                          default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(c: Comparison, out: Path) -> dict[str, Path]:
    """Write ``report.html``, ``figures/*.png`` and ``tables/*.csv`` into ``out``; returns the
    main paths."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    pngs, captions = {}, {}
    for stem, caption, fig in figures(c):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        pngs[stem], captions[stem] = buffer.getvalue(), caption
        _atomic_write_bytes(out / "figures" / f"{stem}.png", pngs[stem])
    tables = {"correlations": correlation_rows(c), "overlap": overlap_rows(c),
              "jaccard_per_sample": jaccard_sample_rows(c), "bland_altman": bland_altman_rows(c),
              "disagreements": disagreement_rows(c), "latent": latent_rows(c),
              "verification": verification_table(c), "faithfulness": faithfulness_rows(c)}
    for kind in c.kinds:
        tables[f"mean_scores_{kind}"] = mean_score_rows(c, kind)
    for name, rows in tables.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    report = out / "report.html"
    _atomic_write_bytes(report, render_html(c, pngs, captions).encode())
    return {"report": report, "figures": out / "figures", "tables": out / "tables"}


def summary_lines(c: Comparison) -> list[str]:
    """A short terminal summary."""
    lines = ["agreement (Spearman of means [95% CI]; Jaccard of top-k per sample):"]
    for a in c.agreements:
        rho = a["correlations"]["spearman_of_means"]
        lines.append(f"  {a['kind']:<8} {a['a']:<16} vs {a['b']:<16} rho {rho.value:+.2f} "
                     f"[{rho.low:+.2f}, {rho.high:+.2f}]  Jaccard@{a['top_k']} "
                     f"{_fmt(a['jaccard'].value, 2)}")
    for (m, kind), sets in c.latent.items():
        and_set = " ".join(e["component"] for e in sets["and"]) or "-"
        or_set = " ".join(e["component"] for e in sets["or"]) or "-"
        lines.append(f"  latent {kind} ({m}): AND {and_set} | OR {or_set}")
    for (result, kind), curve in c.faithfulness.items():
        lines.append(f"  faithfulness {kind:<8} {result:<16} CPR {curve['cpr']:.2f} "
                     f"CMD {curve['cmd']:.2f}")
    return lines
