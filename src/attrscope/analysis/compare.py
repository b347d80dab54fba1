"""``compare``: run methods in both directions, compare them, find latent components, verify by
ablation. :func:`compare` returns a :class:`Comparison` that :mod:`attrscope.analysis.report`
writes as HTML, PNG and CSV.

Results are cached in ``cache_dir`` under a key made of everything that produced them (model
weights, task tokens and answers, method, direction, components, settings, dtype, device and
attrscope version), so a rerun with the same settings reuses them and says so; any change makes
a new key, never a stale reuse. A cached file is reused only if its checksum verifies; a corrupt,
truncated or unverifiable one is recomputed (and overwritten) with a
:class:`CorruptResultWarning` naming it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..api import attribute
from ..checks import check_finite_metrics
from ..checkpoint import Checkpoint, CorruptResultWarning, reuse_or_compute  # noqa: F401
from ..components import KINDS
from ..engine import Runner
from ..keys import (BATCHING_SETTINGS, model_fingerprint, result_key, result_name,  # noqa: F401
                    task_fingerprint)
from ..methods import METHODS
from ..normalize import check_normalize
from ..edges.circuit import CircuitEvaluator
from ..edges.methods import EdgeRun
from ..scores import EDGES, Scores
from ..tasks.base import Task
from .ablation import Ablator
from .agreement import agreement, top_k_count
from .latent import MIN_ASYMMETRY, latent_analysis
from .verify import (faithfulness_curve, faithfulness_note, ranked_components,
                     verification_rows)


def run_or_reuse(model, task: Task, method: str, direction: str, kinds: Sequence[str],
                 settings: dict, cache_dir: Path | None, runner: Runner | None,
                 show_progress: bool, log: Callable[[str], None], fingerprints: tuple[str, str]
                 ) -> tuple[Scores, bool]:
    """A result from ``cache_dir`` made with exactly these inputs, or a fresh one (saved there,
    resuming an interrupted run's chunks; see :func:`attrscope.checkpoint.reuse_or_compute`).
    Returns (scores, reused)."""
    resolved = {**METHODS[method].defaults, **settings}
    dtype = str(next(model.parameters()).dtype)
    device = str(task.clean_tokens.device)
    key = result_key(*fingerprints, method, direction, kinds, resolved, dtype, device)

    def compute(checkpoint=None) -> Scores:
        return attribute(model, task, method, direction, list(kinds), show_progress=show_progress,
                         runner=runner, checkpoint=checkpoint, **settings)

    if cache_dir is None:
        scores = compute()
        log(f"{method} {direction}: computed in {scores.meta['seconds']:.1f}s")
        return scores, False
    path = cache_dir / result_name(method, direction, key)
    return reuse_or_compute(path, key, compute, log, f"{method} {direction}")


@dataclass
class Comparison:
    """Everything the report shows. ``results[(method, direction)]`` are the Scores."""

    results: dict[tuple[str, str], Scores]
    kinds: list[str]
    agreements: list[dict] = field(default_factory=list)
    asymmetries: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    latent: dict[str, dict] = field(default_factory=dict)  # kind -> latent_analysis(...)
    verification: dict[str, list[dict]] = field(default_factory=dict)
    faithfulness: dict[tuple[str, str], dict] = field(default_factory=dict)
    faithfulness_notes: dict[str, str] = field(default_factory=dict)
    failed_samples: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> "Comparison":
        """The same comparison with only the results that score ``kind`` (node methods score
        heads and neurons, edge methods the edges)."""
        results = {key: s for key, s in self.results.items() if kind in s}
        return self if len(results) == len(self.results) else replace(self, results=results)


def methods_by_kind(methods: Sequence[str], kinds: Sequence[str]) -> dict[str, list[str]]:
    """Which methods score each kind: node methods the node ``kinds``, edge methods the edges."""
    node = [m for m in methods if METHODS[m].granularity == "node"]
    edge = [m for m in methods if METHODS[m].granularity == "edge"]
    out = {kind: node for kind in kinds} if node else {}
    if edge:
        out[EDGES] = edge
    return out


def clean_metric(results: dict[tuple[str, str], Scores]) -> torch.Tensor:
    """``[n]`` metric on the clean prompts (the noising run's, or the denoising source's)."""
    (method, direction), scores = next(iter(results.items()))
    return scores.extras["metric.run" if direction == "noising" else "metric.source"]


def normalized_or_refused(scores: Scores, mode: str) -> Scores:
    """``scores`` as fractions of the metric gap, refusing samples below the floor: flagged
    samples' NaN scores would enter the bootstraps."""
    out = scores.normalized(mode, small_gap="flag")
    info = out.meta["normalize"]
    if info["small_gap_samples"]:
        raise ValueError(f"normalize={mode!r}: sample(s) {info['small_gap_samples']} have a "
                         f"clean - corrupted metric gap below the floor {info['floor']:.3g} "
                         f"({info['gap_floor']} x the mean |gap|); compare refuses them: leave them out of the task or "
                         "compare without normalising.")
    return out


def label(method: str, direction: str) -> str:
    return f"{method} {direction}"


def compare(model, task: Task, methods: Sequence[str] = ("ap", "atp", "ig"),
            directions: Sequence[str] = ("denoising", "noising"),
            kinds: Sequence[str] = ("heads", "neurons"), *, k: int | float = 10,
            ablation: str = "other", n_boot: int = 1000, n_random: int = 100, seed: int = 0,
            min_asymmetry: float = MIN_ASYMMETRY, alpha: float = 0.05,
            method_settings: dict | None = None, cache_dir: Path | None = None,
            show_progress: bool = True, log: Callable[[str], None] = print,
            normalize: str | None = None) -> Comparison:
    """Run ``methods`` x ``directions`` on ``kinds``, then agreement of every pair of methods in
    each direction, direction asymmetry with bootstrap intervals and AND/OR calls
    (|asymmetry| >= ``min_asymmetry``, interval excluding 0) of every method run in both
    directions with the latent contrast against ig (:mod:`attrscope.analysis.latent`), and
    verification by ``ablation`` of the clean run against ``n_random`` same-size sets per size
    (confirmed at p <= ``alpha``; see :mod:`attrscope.analysis.verify`). Edge methods (``eap``,
    ``exact``, ...) score the edges: they are compared with each other, and verified by the
    faithfulness of their top circuits (:meth:`attrscope.edges.circuit.CircuitEvaluator.curve`).

    ``normalize="gap"`` or ``"gap-batch"``: every result is compared as fractions of the clean -
    corrupted metric gap (:mod:`attrscope.normalize`); a sample (or batch) whose gap is below the
    floor is refused, since a flagged sample's NaN scores would enter the bootstraps. The cache
    keeps the unnormalised results."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {sorted(METHODS)}.")
    bad_kinds = [kd for kd in kinds if kd not in KINDS]
    if bad_kinds:
        raise ValueError(f"Unknown component kind(s) {bad_kinds}; choose from {sorted(KINDS)}.")
    check_normalize(normalize)
    method_settings = method_settings or {}
    started = time.perf_counter()
    fingerprints = (model_fingerprint(model), task_fingerprint(task)) if cache_dir else ("", "")
    by_kind = methods_by_kind(methods, kinds)
    results: dict[tuple[str, str], Scores] = {}
    reused = []
    runners, edge_runs = {}, {}
    for d in directions:
        for m in methods:
            edge = METHODS[m].granularity == "edge"
            if edge and d not in edge_runs:
                edge_runs[d] = EdgeRun.prepare(model, task, d)
            if not edge and d not in runners:
                runners[d] = Runner(model, task, d, [KINDS[kd] for kd in kinds])
                check_finite_metrics(runners[d], task)
            settings = {key: v for key, v in method_settings.items() if key in METHODS[m].defaults}
            scores, was_reused = run_or_reuse(
                model, task, m, d, [EDGES] if edge else kinds, settings, cache_dir,
                edge_runs[d] if edge else runners[d], show_progress, log, fingerprints)
            results[(m, d)] = normalized_or_refused(scores, normalize) if normalize else scores
            if was_reused:
                reused.append(label(m, d))
    comparison = Comparison(results=results, kinds=list(by_kind), reused=reused)
    log(f"comparing: agreement of every pair ({n_boot} bootstrap resamples), direction "
        "asymmetry and latent sets ...")

    for kind, kind_methods in by_kind.items():
        for d in directions:
            for i, a in enumerate(kind_methods):
                for b in kind_methods[i + 1:]:
                    comparison.agreements.append(
                        agreement(results[(a, d)], results[(b, d)], kind, k=k, n_boot=n_boot,
                                  seed=seed))
        if {"denoising", "noising"} <= set(directions):
            kind_results = {key: s for key, s in results.items() if key[0] in kind_methods}
            analysis = latent_analysis(kind_results, kind, min_asymmetry, n_boot, seed)
            comparison.latent[kind] = analysis
            for m, est in analysis["asymmetry"].items():
                comparison.asymmetries[(m, kind)] = est["value"]

    node_kinds = [kind for kind in by_kind if kind != EDGES]
    ablator = None
    if node_kinds:
        ablator = Ablator(model, task, how=ablation, run="clean", kinds=node_kinds,
                          runner=runners.get("noising"))
        if cache_dir is not None:
            ablator.checkpoint = _ablation_checkpoint(cache_dir, model, task, ablation,
                                                      node_kinds, fingerprints, log)
    for kind in node_kinds:
        log(f"verifying {kind} by ablation ({ablation}): top-k, one-method-only, latent and "
            f"{n_random} random sets per size, then faithfulness curves of {len(results)} "
            "results ...")
        node_results = {key: s for key, s in results.items() if key[0] in by_kind[kind]}
        n_components = next(iter(node_results.values()))[kind][0].numel()
        top = top_k_count(k, n_components)
        called = comparison.latent.get(kind, {}).get("calls", {})
        comparison.verification[kind] = verification_rows(
            ablator, {label(*key): s for key, s in node_results.items()}, kind, top, called,
            n_null=n_random, seed=seed, n_boot=n_boot, alpha=alpha)
        rankings = {}
        for key, s in node_results.items():
            curve = faithfulness_curve(ablator, s, kind)
            comparison.faithfulness[(label(*key), kind)] = curve
            rankings[label(*key)] = ranked_components(s, kind)
        comparison.faithfulness_notes[kind] = faithfulness_note(kind, rankings, curve["sizes"])
    if EDGES in by_kind:
        log(f"verifying edges: faithfulness of the top circuits of each edge result "
            f"({ablation} ablation of the edges outside) ...")
        evaluator = CircuitEvaluator.for_task(model, task, ablation, run="clean")
        for key, s in results.items():
            if key[0] in by_kind[EDGES]:
                comparison.faithfulness[(label(*key), EDGES)] = evaluator.curve(
                    s.mean(EDGES).flatten())
    if node_kinds:
        ablator.checkpoint.discard()  # every ablation it kept is in the comparison now
    comparison.failed_samples = failed_samples(task, clean_metric(results))

    first = next(iter(results.values()))
    comparison.settings = {"methods": list(methods), "directions": list(directions),
                           "components": list(kinds), "k": k, "ablation": ablation,
                           "ablation_run": "clean", "n_boot": n_boot, "n_random": n_random,
                           "seed": seed, "min_asymmetry": min_asymmetry, "alpha": alpha,
                           "normalize": normalize, "method_settings": {label(*key): s.meta.get("settings")
                                                             for key, s in results.items()}}
    comparison.info = {"model": first.meta.get("model"), "model_config": first.meta.get("model_config"),
                       "task": first.meta.get("task"), "versions": first.meta.get("versions"),
                       "device": first.meta.get("device"), "dtype": first.meta.get("dtype"),
                       "metric": first.meta.get("metric"),
                       "sign_conventions": {d: results[(methods[0], d)].meta.get("sign_convention")
                                            for d in directions},
                       "clean_metric_mean": float(clean_metric(results).mean()),
                       "seconds": round(time.perf_counter() - started, 1)}
    return comparison


def _ablation_checkpoint(cache_dir: Path, model, task: Task, how: str, kinds: Sequence[str],
                         fingerprints: tuple[str, str], log: Callable[[str], None]) -> Checkpoint:
    """Where the verification keeps finished blocks of ablated sets, so an interrupted
    ``compare`` resumes its ablation sweeps (:mod:`attrscope.checkpoint`)."""
    key = result_key(*fingerprints, "ablation", "clean run", kinds, {"how": how},
                     str(next(model.parameters()).dtype), str(task.clean_tokens.device))
    checkpoint = Checkpoint(cache_dir / f"ablations-{key[:16]}.parts", key)
    if checkpoint.stored():
        log(f"ablations: resuming from {checkpoint.stored()} finished block(s) of ablated sets "
            f"in {checkpoint.folder}")
    return checkpoint


def failed_samples(task: Task, clean_metric: torch.Tensor) -> list[dict]:
    """The samples whose clean metric ``[n]`` is not positive (the model does not prefer the
    answer there), with their prompt and answer when the task has them."""
    rows = []
    for i in torch.nonzero(clean_metric <= 0).flatten().tolist():
        pair = task.pairs[i] if i < len(getattr(task, "pairs", [])) else None
        rows.append({"sample": i, "clean_metric": float(clean_metric[i]),
                     "clean": getattr(pair, "clean", ""), "answer": str(getattr(pair, "answer", ""))})
    return rows
