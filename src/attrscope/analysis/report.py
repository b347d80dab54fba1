"""Write a :class:`~attrscope.analysis.compare.Comparison` as a self-contained HTML report, the
same figures as PNG files, and CSV tables of every number in the report."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import torch  # noqa: E402

from .agreement import top_k_count  # noqa: E402
from ..components import KINDS  # noqa: E402
from ..scores import EDGES  # noqa: E402
from .compare import Comparison, label  # noqa: E402
from .pages import atomic_write_bytes, fmt, table, write_page  # noqa: E402


def write_csv(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys) as CSV, atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())
    return path


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
    labels = next(iter(c.results.values())).labels(kind)  # L.U, L or L.U@P
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


def _image(c: Comparison, kind: str, value: torch.Tensor) -> tuple:
    """(2-d array, x label, y label, x tick labels or None) of a ``[layers, units]`` value, or
    of a position-resolved ``[layers, units, positions]`` one: rows every layer of a one-unit
    site (layer x position) or every ``L.U`` (layer-major), columns the positions."""
    unit = KINDS[kind].unit if kind in KINDS else kind
    if value.dim() < 3:  # [layers, units], or edges [edges] as one row
        return value.reshape(-1, value.shape[-1]).numpy(), unit, "layer", None
    first = next(iter(c.of_kind(kind).results.values()))
    if value.shape[1] == 1:
        return value.flatten(0, 1).numpy(), "position", "layer", [str(p) for p in
                                                                  first.position_labels]
    rows = [f"{layer}.{u}" for layer in range(value.shape[0]) for u in range(value.shape[1])]
    return (value.flatten(0, 1).numpy(), "position", (f"{unit} (L.U)", rows),
            [str(p) for p in first.position_labels])


def _axes_of(ax, image: tuple) -> None:
    _, xlabel, ylabel, ticks = image
    ylabel, rows = ylabel if isinstance(ylabel, tuple) else (ylabel, None)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if ticks is not None and len(ticks) <= 32:
        ax.set_xticks(range(len(ticks)), ticks, fontsize=6, rotation=90)
    if rows is not None and len(rows) <= 48:  # name each L.U row
        ax.set_yticks(range(len(rows)), rows, fontsize=5)


def heads_heatmaps(c: Comparison, kind: str = "heads"):
    """Layer x unit heatmaps of every method (rows) and direction (columns), one symmetric
    colour scale per method; layer x position or (layer.unit) x position for position-resolved
    results."""
    c = c.of_kind(kind)
    methods, directions = _methods_directions(c)
    fig, axes = plt.subplots(len(methods), len(directions), squeeze=False,
                             figsize=(3.6 * len(directions) + 1, 2.8 * len(methods)),
                             layout="constrained")
    for i, m in enumerate(methods):
        peak = max(float(c.results[(m, d)].mean(kind).abs().max()) for d in directions
                   if (m, d) in c.results) or 1.0
        for j, d in enumerate(directions):
            ax = axes[i][j]
            if (m, d) not in c.results:  # a latent-aware combination has one (noising) result
                ax.axis("off")
                continue
            shown = _image(c, kind, c.results[(m, d)].mean(kind))
            image = ax.imshow(shown[0], cmap="RdBu_r", vmin=-peak,
                              vmax=peak, aspect="auto", interpolation="nearest")
            ax.set_title(f"{m} {d}", fontsize=9)
            _axes_of(ax, shown)
        fig.colorbar(image, ax=list(axes[i]), shrink=0.8, label="mean score")
    fig.suptitle(f"Mean {kind} scores (one colour scale per method)", fontsize=10)
    return fig


def edge_position_heatmaps(c: Comparison):
    """Edge x position heatmaps of position-resolved edge results, one panel per result: the
    rows of :func:`attrscope.analysis.position_maps.kind_rows` (the edges with the largest
    |mean score| at some position), one symmetric colour scale per panel."""
    from .position_maps import kind_rows

    c = c.of_kind(EDGES)
    fig, axes = plt.subplots(1, len(c.results), squeeze=False, layout="constrained",
                             figsize=(2.2 * len(c.results) + 4, 7))
    positions = [str(p) for p in next(iter(c.results.values())).position_labels]
    for ax, ((m, d), s) in zip(axes[0], c.results.items()):
        rows = kind_rows(s, EDGES)
        value = torch.stack([mean for _, mean, _ in rows]).nan_to_num()
        peak = float(value.abs().max()) or 1.0
        image = ax.imshow(value.numpy(), cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto",
                          interpolation="nearest")
        ax.set_title(f"{m} {d}", fontsize=9)
        ax.set_xticks(range(len(positions)), positions, fontsize=6, rotation=90)
        ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=5)
        fig.colorbar(image, ax=ax, shrink=0.6)
    fig.suptitle("Mean edge scores by position (the largest edges of each result)", fontsize=10)
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
        ax.set_title(f"r={fmt(corr['pearson_of_means'].value, 2)}  "
                     f"rho={fmt(corr['spearman_of_means'].value, 2)}", fontsize=9)
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
                     f"{fmt(ba['bias'], 2)}", fontsize=9)
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
        shown = _image(c, kind, v)
        image = ax.imshow(shown[0], cmap="PuOr", vmin=-1, vmax=1, aspect="auto",
                          interpolation="nearest")
        ax.set_title(f"{m}: |denoising| - |noising|", fontsize=9)
        _axes_of(ax, shown)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.8,
                     label="asymmetry (<0 AND-like, >0 OR-like)")
    return fig


def faithfulness_figure(c: Comparison, kind: str):
    from .plots import kept_name

    c = c.of_kind(kind)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (result, kd), curve in c.faithfulness.items():
        if kd != kind:
            continue
        ax.plot(curve["fractions"], curve["f"], marker="o", ms=3,
                label=f"{result} (CPR {curve['cpr']:.2f}, CMD {curve['cmd']:.2f})")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.7, ls="--")
    ax.set_xlabel(f"fraction of {kept_name(c, kind)} kept (top by |mean score|)")
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
        if kind == "heads" and not _positioned(c, kind):
            out.append(("heads_heatmaps", "Mean head scores, layer x head, every method and "
                        "direction (one colour scale per method).", heads_heatmaps(c)))
        elif kind != EDGES and _positioned(c, kind):
            out.append((f"positions_{kind}", f"Mean {kind} scores by position (rows: layers, or "
                        "L.U layer-major; columns: positions), every method and direction.",
                        heads_heatmaps(c, kind)))
        elif _positioned(c, kind):
            out.append(("positions_edges", "Mean edge scores by position: the edges with the "
                        "largest |mean score| at some position (rows) x positions, every method "
                        "and direction.", edge_position_heatmaps(c)))
        for d in directions:
            if _pairs(c, kind, d):
                out.append((f"scatter_{kind}_{d}", f"{kind}, {d}: mean scores of each pair of "
                            "methods, with Pearson r and Spearman rho.", scatter_figure(c, kind, d)))
                out.append((f"bland_altman_{kind}_{d}", f"{kind}, {d}: Bland-Altman (bias line and "
                            "95 % limits of agreement).", bland_altman_figure(c, kind, d)))
        if any(kd == kind for _, kd in c.asymmetries):
            out.append((f"asymmetry_{kind}", f"Direction asymmetry of {kind} (negative = AND-like, "
                        "positive = OR-like).", asymmetry_figure(c, kind)))
        if any(kd == kind for _, kd in c.faithfulness):
            out.append((f"faithfulness_{kind}", f"Faithfulness curves of {kind} circuits.",
                        faithfulness_figure(c, kind)))
        if kind in c.verification:  # node kinds; edges are verified by circuit faithfulness
            out.append((f"verification_{kind}", f"Verification of {kind} by ablation; grey: the "
                        "middle 95 % of random sets of the same size; whiskers: 95 % interval "
                        "over prompts.", verification_figure(c, kind)))
    return out


def _positioned(c: Comparison, kind: str) -> bool:
    """Whether the results of ``kind`` have a position axis (``positions`` other than all)."""
    return next(iter(c.of_kind(kind).results.values())).position_labels is not None


# -- the findings dashboard ----------------------------------------------------------------------
def _interval(e: dict, prefix: str = "") -> str:
    return (f"{e[prefix + ('value' if prefix else 'asymmetry')]:+.3f} "
            f"[{e[prefix + 'low']:+.3f}, {e[prefix + 'high']:+.3f}]")


def _direction_of(result_label: str) -> str:
    """The direction of a result label ``"method direction"`` ("" for a method's AND/OR-like
    set, which comes from both directions)."""
    return result_label.split(" ")[1] if " " in result_label else ""


def agreed_components(c: Comparison, kind: str, direction: str | None = None) -> list[str]:
    """Components in the top k (the agreement's k) of every result of ``kind`` (of
    ``direction``, or of every direction), in the first result's order."""
    c = c.of_kind(kind)
    k = next((a["top_k"] for a in c.agreements if a["kind"] == kind), None)
    if k is None:  # one method: the comparison's k, as agreement would have resolved it
        first = next(iter(c.results.values()))
        k = top_k_count(c.settings.get("k", 10), first[kind][0].numel())
    if kind == EDGES:  # an edge is named by its source, destination and input
        from ..edges.graph import colon_label

        tops = [[colon_label(lab) for lab, _ in s.top(EDGES, k)]
                for (m, d), s in c.results.items() if direction in (None, d)]
    else:
        tops = [top_labels(s, kind, k) for (m, d), s in c.results.items()
                if direction in (None, d)]
    shared = set.intersection(*map(set, tops)) if tops else set()
    return [lab for lab in tops[0] if lab in shared] if tops else []


def top_labels(scores, kind: str, k: int) -> list[str]:
    """The labels (``L.U``, ``L``, ``L.U@P``) of the ``k`` components of ``kind`` with the
    largest |mean score|, ties by position, unscored (NaN) last: the order of
    :func:`attrscope.analysis.verify.ranked_components`, for every site and position."""
    order = torch.argsort(scores.mean(kind).flatten().abs().nan_to_num(-1.0), descending=True,
                          stable=True)[:k]
    labels = scores.labels(kind)
    return [labels[int(i)] for i in order]


def latent_verdict(c: Comparison, kind: str) -> str:
    """The latent AND/OR finding of ``kind`` in a few words."""
    analysis = c.latent.get(kind)
    if analysis is None:
        return "not tested (needs both directions)"
    if analysis["detector"] is None:
        return "not tested (needs ig for the contrast)"
    found = [f"{'AND' if e['asymmetry'] < 0 else 'OR'} {e['component']} ({m})"
             for m, sets in analysis["latent"].items() for w in ("and", "or") for e in sets[w]]
    text = ", ".join(found) if found else "none found"
    alpha = c.settings.get("alpha", 0.05)
    called = [r for r in c.verification.get(kind, []) if r["set"] in ("AND-like", "OR-like")]
    if called:
        text += (f"; AND/OR-like sets confirmed by ablation: "
                 f"{sum(r['p_value'] <= alpha for r in called)} of {len(called)}")
    return text


def verification_counts(c: Comparison, kind: str, direction: str) -> dict | None:
    """Of the ablated sets of ``kind`` from results of ``direction``: how many top-k sets and
    how many other sets (one method only, latent) were confirmed (p <= alpha). None when the
    kind is not verified by ablation (edges: by circuit faithfulness)."""
    rows = [r for r in c.verification.get(kind, []) if r["source"] != "random"
            and _direction_of(r["source"]) == direction]
    if kind not in c.verification:
        if kind != EDGES:  # a node kind the comparison holds no verification of
            return {"skipped": "not verified by ablation", "top": 0, "other": 0}
        return None
    alpha = c.settings.get("alpha", 0.05)
    top = [r for r in rows if r["set"].startswith("top ") and "not in" not in r["set"]]
    other = [r for r in rows if r not in top]  # one method's top k only
    return {"top": len(top), "top_confirmed": sum(r["p_value"] <= alpha for r in top),
            "other": len(other), "other_confirmed": sum(r["p_value"] <= alpha for r in other),
            "k": top[0]["size"] if top else None, "alpha": alpha}


def _cpr(c: Comparison, kind: str, direction: str) -> list[dict]:
    return sorted(({"result": r, "kind": kd, "cpr": v["cpr"],
                    "low": v.get("cpr_low", float("nan")),
                    "high": v.get("cpr_high", float("nan"))}
                   for (r, kd), v in c.faithfulness.items()
                   if kd == kind and _direction_of(r) == direction), key=lambda e: e["cpr"])


def dashboard_rows(c: Comparison) -> list[dict]:
    """One row per component kind and direction: the lowest Spearman rho of the mean scores of
    any two methods with its interval, the lowest top-k Jaccard, the components every method
    ranks in its top k, the latent verdict (of the kind: it contrasts both directions), the
    verification counts and the lowest and highest circuit CPR with their intervals."""
    _, directions = _methods_directions(c)
    rows = []
    for kind in c.kinds:
        for d in directions:
            pairs = [a for a in c.agreements if a["kind"] == kind
                     and _direction_of(a["a"]) == _direction_of(a["b"]) == d]
            if not pairs and not any(kd == kind for (_, kd) in c.faithfulness):
                continue
            rho = min(pairs, key=lambda a: a["correlations"]["spearman_of_means"].value,
                      default=None)
            jac = min(pairs, key=lambda a: a["jaccard"].value, default=None)
            cprs = _cpr(c, kind, d)
            row = {"kind": kind, "direction": d,
                   "rho": None, "rho_low": None, "rho_high": None, "rho_pair": "",
                   "jaccard": None, "jaccard_pair": "", "top_k": None,
                   "agreed": agreed_components(c, kind, d), "latent": latent_verdict(c, kind),
                   "verification": verification_counts(c, kind, d),
                   "cpr_low_result": cprs[0] if cprs else None,
                   "cpr_high_result": cprs[-1] if len(cprs) > 1 else None}
            if rho is not None:
                e = rho["correlations"]["spearman_of_means"]
                row.update(rho=e.value, rho_low=e.low, rho_high=e.high,
                           rho_pair=f"{rho['a'].split()[0]} vs {rho['b'].split()[0]}")
                row.update(jaccard=jac["jaccard"].value, top_k=jac["top_k"],
                           jaccard_pair=f"{jac['a'].split()[0]} vs {jac['b'].split()[0]}")
            rows.append(row)
    return rows


def verification_text(v: dict | None) -> str:
    if v is None:
        return "by circuit faithfulness"
    if v.get("skipped"):
        return v["skipped"]
    text = f"top {v['k']}: {v['top_confirmed']} of {v['top']} confirmed" if v["top"] else ""
    if v["other"]:
        text += (("; " if text else "") + f"in one method's top only: {v['other_confirmed']} "
                 f"of {v['other']}")
    return text or "no sets"


def _cpr_text(e: dict | None) -> str:
    if e is None:
        return ""
    interval = "" if e["low"] != e["low"] else f" [{e['low']:.2f}, {e['high']:.2f}]"  # NaN: none
    return f"{e['cpr']:.2f}{interval}"


def dashboard_sentences(c: Comparison, rows: list[dict]) -> list[str]:
    """At most five sentences that follow from the dashboard's rows, each with its number."""
    out = []
    with_rho = [r for r in rows if r["rho"] is not None]
    if with_rho:
        lo = min(with_rho, key=lambda r: r["rho"])
        lj = min(with_rho, key=lambda r: r["jaccard"])
        out.append(f"Agreement: the lowest Spearman rho between two methods' mean scores is "
                   f"{lo['rho']:+.2f} [{lo['rho_low']:+.2f}, {lo['rho_high']:+.2f}] ({lo['kind']}, "
                   f"{lo['direction']}, {lo['rho_pair']}); the lowest top-{lj['top_k']} Jaccard "
                   f"is {lj['jaccard']:.2f} ({lj['kind']}, {lj['direction']}, "
                   f"{lj['jaccard_pair']}).")
    agreed = []
    for kind in c.kinds:
        both = agreed_components(c, kind)
        k = next((r["top_k"] for r in rows if r["kind"] == kind and r["top_k"]), None)
        if k:
            agreed.append(f"{len(both)} {kind}" + (f" ({', '.join(both[:6])}"
                          + (f" and {len(both) - 6} more" if len(both) > 6 else "") + ")"
                          if both else "") + f" in the top {k}")
    if agreed:
        out.append("Every method ranks, in both directions, " + "; ".join(agreed) + ".")
    latent = [f"{kind}: {latent_verdict(c, kind)}" for kind in c.latent]
    if latent:
        out.append("Latent AND/OR components (patching asymmetric, ig not): "
                   + "; ".join(latent) + ".")
    counts = [r["verification"] for r in rows if r["verification"]
              and not r["verification"].get("skipped")]
    skipped = sorted({r["kind"] for r in rows if (r["verification"] or {}).get("skipped")})
    if skipped:
        out.append(f"Not verified by ablation: {', '.join(skipped)} (agreement and asymmetry "
                   "above still hold).")
    if counts:
        top = sum(v["top"] for v in counts)
        top_ok = sum(v["top_confirmed"] for v in counts)
        other = sum(v["other"] for v in counts)
        other_ok = sum(v["other_confirmed"] for v in counts)
        n_random = c.settings.get("n_random")
        alpha = counts[0]["alpha"]
        out.append(f"Ablation confirms {top_ok} of {top} top-k sets (p <= {alpha:g} against "
                   f"{n_random} same-size random sets)" + (
                       f"; of the {other} sets that only one method ranks high, {other_ok} are "
                       "confirmed and the others are indistinguishable from random"
                       if other else "") + ".")
    cprs = [e for r in rows for e in (r["cpr_low_result"], r["cpr_high_result"]) if e]
    if cprs:
        lo = min(cprs, key=lambda e: e["cpr"])
        hi = max(cprs, key=lambda e: e["cpr"])
        out.append(f"Circuits of the top-ranked components: faithfulness CPR from "
                   f"{_cpr_text(lo)} ({lo['kind']}, {lo['result']}) to {_cpr_text(hi)} "
                   f"({hi['kind']}, {hi['result']}); 1 is the whole model.")
    return out[:5]


def closest_rows(c: Comparison) -> list[dict]:
    """The near-miss latent candidates: never findings, shown so a reader sees how close."""
    return [{"kind": kind, "method": m, "component": e["component"], "asymmetry": e["asymmetry"],
             "ci_low": e["low"], "ci_high": e["high"], "ig_asymmetry": e.get("ig_value"),
             "why not latent": e.get("why", "")}
            for kind, analysis in c.latent.items() for m, es in analysis["closest"].items()
            for e in es]


def called_rows(c: Comparison) -> list[dict]:
    return [{"kind": kind, "method": m, "call": w.upper() + "-like", "component": e["component"],
             "asymmetry": e["asymmetry"], "ci_low": e["low"], "ci_high": e["high"],
             "latent": any(x["component"] == e["component"]
                           for x in analysis["latent"].get(m, {}).get(w, []))}
            for kind, analysis in c.latent.items() for m, sets in analysis["calls"].items()
            for w in ("and", "or") for e in sets[w]]


def ground_truth_rows(c: Comparison) -> list[dict]:
    """Precision/recall against the planted circuit when the model is ``attrscope-planted``."""
    from ..models import PLANTED_MODEL_NAME
    from .ground_truth import evaluate, load_ground_truth

    if c.info.get("model") != PLANTED_MODEL_NAME:
        return []
    return [r for r in evaluate(c, load_ground_truth()) if r["predicted"] or r["truth"]]


def render_html(c: Comparison, plotly_js: str | None = None) -> str:
    """The report: the findings dashboard first, details collapsed below it, then interactive
    figures and tables. ``plotly_js``: the plotly.js source to embed (None: the page loads
    ``plotly.min.js`` from its folder)."""
    from . import pages, plots

    return pages.render("compare.html", **_context(c), plotly_js=plotly_js,
                        figures=[(s, div, pages.figure(plots.figure_div(fig, div)))
                                 for s, div, fig in plots.report_figures(c)])


def _context(c: Comparison) -> dict:
    import json

    rows = dashboard_rows(c)
    cpr = [{"result": r, "kind": kd, "cpr": v["cpr"], "cpr_low": v.get("cpr_low"),
            "cpr_high": v.get("cpr_high"), "cmd": v["cmd"], "cmd_low": v.get("cmd_low"),
            "cmd_high": v.get("cmd_high"), "m_model": v["m_model"], "m_empty": v["m_empty"]}
           for (r, kd), v in c.faithfulness.items()]
    latent = next(iter(c.latent.values()), None)
    return {
        "title": "attrscope comparison", "info": c.info, "settings": c.settings,
        "task": c.info.get("task") or {}, "methods": _methods_directions(c)[0],
        "dashboard": rows, "sentences": dashboard_sentences(c, rows),
        "verification_text": verification_text, "cpr_text": _cpr_text,
        "normalization": normalization(c), "reused": c.reused, "screening": screening_lines(c),
        "failed": c.failed_samples, "failure_note": _no_failure_threshold(c), "notes": [n for n in c.faithfulness_notes.values() if n],
        "latent_rule": None if latent is None else {
            "level": int(100 * latent["level"]), "threshold": latent["threshold"]},
        "tables": {
            "verification": table(verification_table(c), [
                "kind", "set", "source", "size", "metric_change", "ci_low", "ci_high",
                "null_mean", "null_sd", "p_value", "effect_size", "verdict", "components"],
                "verification"),
            "closest": table(closest_rows(c), name="latent-candidates"),
            "called": table(called_rows(c), name="and-or-calls"),
            "ground_truth": table(ground_truth_rows(c), name="ground-truth"),
            "failed": table(c.failed_samples, name="failed-samples"),
            "overlap": table(overlap_rows(c), name="overlap"),
            "correlations": table(correlation_rows(c), ["a", "b", "kind", "statistic", "value",
                                                        "ci_low", "ci_high"], "correlations"),
            "bland_altman": table(bland_altman_rows(c), name="bland-altman"),
            "disagreements": table(disagreement_rows(c), name="disagreements"),
            "asymmetric": table(significant_asymmetry_rows(c), name="asymmetry"),
            "cpr": table(cpr, name="cpr"),
        },
        "settings_json": json.dumps({"settings": c.settings, "info": c.info}, indent=2,
                                    default=str),
    }


def write_report(c: Comparison, out: Path, self_contained: bool = False) -> dict[str, Path]:
    """Write ``report.html`` (with ``plotly.min.js`` beside it, or embedded when
    ``self_contained``), ``figures/*.png`` and ``tables/*.csv`` into ``out``; returns the
    main paths."""
    from . import pages, plots

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for stem, _, fig in figures(c):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(out / "figures" / f"{stem}.png", buffer.getvalue())
    tables = {"correlations": correlation_rows(c), "overlap": overlap_rows(c),
              "jaccard_per_sample": jaccard_sample_rows(c), "bland_altman": bland_altman_rows(c),
              "disagreements": disagreement_rows(c), "latent": latent_rows(c),
              "verification": verification_table(c), "faithfulness": faithfulness_rows(c),
              "dashboard": [{**{k: v for k, v in r.items() if k not in (
                  "verification", "cpr_low_result", "cpr_high_result", "agreed")},
                  "agreed": ", ".join(r["agreed"]),
                  "verification": verification_text(r["verification"]),
                  "cpr_lowest": _cpr_text(r["cpr_low_result"]),
                  "cpr_lowest_result": (r["cpr_low_result"] or {}).get("result", ""),
                  "cpr_highest": _cpr_text(r["cpr_high_result"]),
                  "cpr_highest_result": (r["cpr_high_result"] or {}).get("result", "")}
                  for r in dashboard_rows(c)]}
    for kind in c.kinds:
        tables[f"mean_scores_{kind}"] = mean_score_rows(c, kind)
    for name, rows in tables.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    report = write_page(out / "report.html", "compare.html", self_contained=self_contained,
                        **_context(c),
                        figures=[(s, div, pages.figure(plots.figure_div(fig, div)))
                                 for s, div, fig in plots.report_figures(c)])
    return {"report": report, "figures": out / "figures", "tables": out / "tables"}


def normalization(c: Comparison) -> str | None:
    """How the compared scores were normalised (one line), or None."""
    from ..normalize import describe

    return describe(next(iter(c.results.values())).meta) if c.results else None


def detail_lines(c: Comparison) -> list[str]:
    """The long terminal summary (``compare --verbose``): every pair's agreement, the latent
    calls and closest candidates, every verification set and faithfulness curve."""
    lines = [normalization(c)] if normalization(c) else []
    lines += screening_lines(c)
    lines.append("agreement (Spearman of means [95% CI]; Jaccard of top-k per sample):")
    for a in c.agreements:
        rho = a["correlations"]["spearman_of_means"]
        lines.append(f"  {a['kind']:<8} {a['a']:<16} vs {a['b']:<16} rho {rho.value:+.2f} "
                     f"[{rho.low:+.2f}, {rho.high:+.2f}]  Jaccard@{a['top_k']} "
                     f"{fmt(a['jaccard'].value, 2)}"
                     + (f"  (on the {a['n_components']} components both scored)"
                        if a.get("unscored_components") else ""))
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
                     f"{fmt(r['precision'], 2)} recall {fmt(r['recall'], 2)}")
    return lines


def screening_lines(c: Comparison) -> list[str]:
    """The plan (exact everywhere, or screened under the time budget) and, for each screened
    result, which units are exact and the audit's false-negative estimate."""
    lines = [c.info["plan"]] if c.info.get("plan") else []
    for result, info in (c.info.get("screening") or {}).items():
        for kind, s in info["kinds"].items():
            fn = s["false_negatives"]
            lines.append(
                f"{result} {kind}: {s['exact']} of {s['units']} exact ({len(s['screened_top'])} "
                f"by {info['screen']}, {len(s['audit_units'])} audited at random), {s['unverified']} "
                f"not verified (NaN); estimated misses of the exact top {info['top_k']}: "
                f"{fn['estimate']:.1f} [{fn['low']}, {fn['high']}] ({info['level']:.0%} interval, "
                f"{s['audit_above_threshold']} of the audit above the threshold {s['threshold']:.3g})")
    return lines


def screening_digest(c: Comparison) -> list[str]:
    """One line per kind that a screened result left partly unverified: exact units and the
    audit's estimate of the exact top K's misses, per result (details: :func:`screening_lines`)."""
    by_kind: dict[str, list[str]] = {}
    for result, info in (c.info.get("screening") or {}).items():
        for kind, s in info["kinds"].items():
            if s["unverified"]:
                fn = s["false_negatives"]
                by_kind.setdefault(kind, []).append(
                    f"{result} {s['exact']}/{s['units']} exact, misses of the top "
                    f"{info['top_k']} {fn['estimate']:.1f} [{fn['low']}, {fn['high']}]")
    return [f"screened {kind} (unverified = NaN): " + "; ".join(parts)
            for kind, parts in by_kind.items()]


def summary_lines(c: Comparison, verbose: bool = False) -> list[str]:
    """The terminal summary of ``compare``: the dashboard's table as text (at most 13 lines,
    plus the report's path that the command adds); ``verbose``: :func:`detail_lines` too."""
    rows = dashboard_rows(c)
    lines = [normalization(c)] if normalization(c) else []
    lines += screening_digest(c)
    lines.append(f"{'':<18} {'lowest rho [95% CI], pair':<31} {'min J':>5}  "
                 f"{'in every top k':<21} {'verified by ablation':<22} CPR lowest..highest")
    for r in rows:
        rho = (f"{r['rho']:+.2f} [{r['rho_low']:+.2f}, {r['rho_high']:+.2f}] "
               f"{r['rho_pair'].replace(' vs ', '/')}" if r["rho"] is not None else "n/a")
        agreed = ", ".join(r["agreed"][:3]) + (f" +{len(r['agreed']) - 3}"
                                               if len(r["agreed"]) > 3 else "") \
            if r["agreed"] else "none"
        jaccard = f"{r['jaccard']:.2f}" if r["jaccard"] is not None else "n/a"
        v = r["verification"]
        verified = ("not verified" if v and v.get("skipped") else
                    f"top {v['top_confirmed']}/{v['top']}, other {v['other_confirmed']}/"
                    f"{v['other']}" if v else "by faithfulness")
        cpr = _cpr_text(r["cpr_low_result"]) + (
            f" .. {_cpr_text(r['cpr_high_result'])}" if r["cpr_high_result"] else "")
        lines.append(f"{r['kind'] + ' ' + r['direction']:<18} {rho:<31} "
                     f"{jaccard:>5}  {agreed:<21} {verified:<22} {cpr}")
    latent = "; ".join(f"{kind} {latent_verdict(c, kind)}" for kind in c.latent)
    if latent:
        lines.append(f"latent AND/OR: {latent}")
    lines.append(_no_failure_threshold(c) or
                 f"samples the model fails (clean metric <= 0): {len(c.failed_samples)}"
                 + (" (" + ", ".join(str(r["sample"]) for r in c.failed_samples[:20])
                    + (" ..." if len(c.failed_samples) > 20 else "") + ")"
                    if c.failed_samples else ""))
    if len(lines) > 13:  # many kinds x directions: say what was left out, never drop silently
        lines = lines[:12] + [f"... {len(lines) - 12} more lines in the report and --verbose"]
    if verbose:
        lines += detail_lines(c)
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
