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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..api import attribute
from ..checks import check_finite_metrics
from ..checkpoint import Checkpoint, CorruptResultWarning, reuse_or_compute  # noqa: F401
from ..components import CIRCUIT_KINDS, KINDS
from ..engine import Runner
from ..keys import (BATCHING_SETTINGS, model_fingerprint, result_key, result_name,  # noqa: F401
                    task_fingerprint)
from ..methods import METHODS
from ..registry import current_names
from ..methods.screening import check_screen_settings
from ..normalize import check_has_gap, check_normalize
from ..edges.circuit import CircuitEvaluator
from ..edges.methods import EdgeRun
from ..edges.positional import position_curve
from ..scores import EDGES, Scores
from ..tasks.base import Task
from ..sites import resolve_positions
from ..tasks.positions import parse_setting
from .ablation import Ablator  # noqa: F401
from .position_ablation import ablator_at
from .budget import DEFAULT_BUDGET_S, Schedule, budgeted
from .agreement import agreement, top_k_count
from .latent import MIN_ASYMMETRY, latent_analysis
from .verify import (NullTest, faithfulness_curve, faithfulness_note, ranked_components,
                     verification_rows)


@dataclass
class ResultCache:
    """Results in ``folder`` (None: nothing kept) under their key (:mod:`attrscope.keys`):
    :meth:`get` reuses a result made with exactly these inputs, or computes it (saved there,
    resuming an interrupted run's chunks; see :func:`attrscope.checkpoint.reuse_or_compute`).
    ``fingerprints``: the model's and the task's (:func:`model_fingerprint`,
    :func:`task_fingerprint`), computed once by the caller."""

    folder: Path | None
    fingerprints: tuple[str, str] = ("", "")
    log: Callable[[str], None] = print

    def get(self, model, task: Task, method: str, direction: str, kinds: Sequence[str],
            settings: dict, runner=None, show_progress: bool = False) -> tuple[Scores, bool]:
        """(scores, reused) of ``method`` in ``direction`` on ``kinds`` with ``settings``."""
        resolved = {**METHODS[method].defaults, **settings}
        dtype = str(next(model.parameters()).dtype)
        device = str(task.clean_tokens.device)
        key = result_key(*self.fingerprints, method, direction, kinds, resolved, dtype, device)

        def compute(checkpoint=None) -> Scores:
            return attribute(model, task, method, direction, list(kinds),
                             show_progress=show_progress, runner=runner, checkpoint=checkpoint,
                             **settings)

        if self.folder is None:
            scores = compute()
            self.log(f"{method} {direction}: computed in {scores.meta['seconds']:.1f}s")
            return scores, False
        return reuse_or_compute(self.folder / result_name(method, direction, key), key, compute,
                                self.log, f"{method} {direction}")


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


def scored_kinds(method: str, kinds: Sequence[str], positions="all") -> list[str]:
    """The node ``kinds`` that ``method`` (or its combination ``METHOD:HOW``) scores at
    ``positions``: a method without a ``positions`` setting (atpstar: its QK fix is a head's
    query/key path over all positions) scores heads and neurons over all positions only."""
    spec = METHODS[method.split(":")[0]]
    if "positions" in spec.defaults:
        return list(kinds)
    return [kd for kd in kinds if kd in CIRCUIT_KINDS] if parse_setting(positions) == "all" else []


def methods_by_kind(methods: Sequence[str], kinds: Sequence[str], positions="all"
                    ) -> dict[str, list[str]]:
    """Which methods score each kind: node methods the node ``kinds`` they score at
    ``positions`` (:func:`scored_kinds`), edge methods the edges. A latent-aware combination
    ``METHOD:HOW`` scores what its method scores. Kinds no method scores are left out."""
    node = [m for m in methods if METHODS[m.split(":")[0]].granularity == "node"]
    edge = [m for m in methods if METHODS[m.split(":")[0]].granularity == "edge"]
    out = {kind: [m for m in node if kind in scored_kinds(m, kinds, positions)] for kind in kinds}
    out = {kind: ms for kind, ms in out.items() if ms}
    if edge:
        out[EDGES] = edge
    return out


def left_out_note(methods: Sequence[str], kinds: Sequence[str], positions="all") -> list[str]:
    """One line per node method that leaves some of ``kinds`` out at ``positions``."""
    lines = []
    for m in methods:
        if METHODS[m].granularity != "node":
            continue
        missing = [kd for kd in kinds if kd not in scored_kinds(m, kinds, positions)]
        if missing:
            where = "" if parse_setting(positions) == "all" else f" or positions={positions!r}"
            lines.append(f"note: {m} leaves out {', '.join(missing)}: it scores heads and neurons "
                         f"over all positions only (no sites{where}); compared without it there.")
    return lines


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


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`compare` computes: ``methods`` x ``directions`` on ``kinds``; ``k`` top
    components per method (a count, or a fraction in (0, 1)) for overlap, latent sets and
    verification; ``ablation`` (other, mean or zero) of the clean run in the verification,
    against ``n_random`` same-size random sets per size, confirmed at p <= ``alpha``;
    ``n_boot`` bootstrap resamples; ``seed``; ``min_asymmetry`` (a share of the kind's largest
    mean |score|) for AND/OR calls; ``method_settings`` (each method takes the ones it
    declares); ``normalize`` ("gap" or "gap-batch", or None); ``positions`` ("all", "each" or
    position names): every (unit, position) is a component of the agreement, asymmetry, latent
    sets and the verification (:mod:`.position_ablation`), every (edge, position) pair one of
    the edge methods'; ``kinds`` any site of
    :mod:`attrscope.components`, each verified by ablating its units (:mod:`.ablation`)."""

    methods: tuple[str, ...] = ("ap", "atp", "ig")
    directions: tuple[str, ...] = ("denoising", "noising")
    kinds: tuple[str, ...] = ("heads", "neurons")
    k: int | float = 10
    ablation: str = "other"
    n_boot: int = 1000
    n_random: int = 100
    seed: int = 0
    min_asymmetry: float = MIN_ASYMMETRY
    alpha: float = 0.05
    method_settings: dict = field(default_factory=dict)
    normalize: str | None = None
    budget: float | None = DEFAULT_BUDGET_S
    screen: str = "atp"
    combine: tuple[str, ...] = ()  # latent-aware combinations (analysis.combine) to add
    # "all", "each" or position names: every (unit, position) is a component of its own
    positions: str | tuple[str, ...] = "all"

    @property
    def compared(self) -> tuple[str, ...]:
        """The methods, then each method's combinations ``METHOD:HOW`` (with both directions:
        results in the noising convention, compared and verified as noising results)."""
        both = {"denoising", "noising"} <= set(self.directions)
        return self.methods + tuple(f"{m}:{how}" for how in self.combine for m in self.methods
                                    if both)

    def check(self) -> "CompareSettings":
        """These settings, refused (ValueError naming the value) before any run if unknown."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}; choose from {sorted(METHODS)}.")
        bad_kinds = [kd for kd in self.kinds if kd not in KINDS]
        if bad_kinds:
            raise ValueError(f"Unknown component kind(s) {bad_kinds}; choose from {sorted(KINDS)}.")
        parse_setting(self.positions)  # a PositionError (one line) names a bad setting
        if not methods_by_kind(self.methods, self.kinds, self.positions):
            raise ValueError(f"No method given scores {', '.join(self.kinds)} at positions="
                             f"{self.positions!r}: {', '.join(self.methods)} score heads and "
                             "neurons over all positions only; add ap, atp or ig.")
        check_normalize(self.normalize)
        if self.budget is not None and not self.budget > 0:
            raise ValueError(f"budget={self.budget!r}: give a positive number of seconds, or None.")
        check_screen_settings({"screen": self.screen, "positions": self.positions})
        from .combine import COMBINATIONS

        bad = [how for how in self.combine if how not in COMBINATIONS]
        if bad:
            raise ValueError(f"Unknown combination(s) {bad}; choose from {list(COMBINATIONS)}.")
        if self.combine and not {"denoising", "noising"} <= set(self.directions):
            raise ValueError("combine needs both directions (denoising and noising).")
        return self

    def settings_of(self, method: str) -> dict:
        own = {key: v for key, v in self.method_settings.items() if key in METHODS[method].defaults}
        if "positions" in METHODS[method].defaults and parse_setting(self.positions) != "all":
            own["positions"] = self.positions  # node sites and edges alike: (edge, position) pairs
        return own

    def recorded(self, results: dict[tuple[str, str], Scores]) -> dict:
        """The settings as the report records them, with each result's resolved settings."""
        return {"methods": list(self.methods), "directions": list(self.directions),
                "components": list(self.kinds), "k": self.k, "ablation": self.ablation,
                "ablation_run": "clean", "n_boot": self.n_boot, "n_random": self.n_random,
                "seed": self.seed, "min_asymmetry": self.min_asymmetry, "alpha": self.alpha,
                "normalize": self.normalize, "budget": self.budget, "screen": self.screen,
                "combine": list(self.combine), "positions": self.positions,
                "method_settings": {label(*key): s.meta.get("settings") for key, s in results.items()}}


def compare(model, task: Task, methods: Sequence[str] = ("ap", "atp", "ig"),
            directions: Sequence[str] = ("denoising", "noising"),
            kinds: Sequence[str] = ("heads", "neurons"), *, cache_dir: Path | None = None,
            show_progress: bool = True, log: Callable[[str], None] = print,
            **settings) -> Comparison:
    """Run ``methods`` x ``directions`` on ``kinds``, then agreement of every pair of methods in
    each direction, direction asymmetry with bootstrap intervals and AND/OR calls
    (|asymmetry| >= ``min_asymmetry``, interval excluding 0) of every method run in both
    directions with the latent contrast against ig (:mod:`attrscope.analysis.latent`), and
    verification by ``ablation`` of the clean run against ``n_random`` same-size sets per size
    (confirmed at p <= ``alpha``; see :mod:`attrscope.analysis.verify`). Edge methods (``eap``,
    ``exact``, ...) score the edges: they are compared with each other, and verified by the
    faithfulness of their top circuits (:meth:`attrscope.edges.circuit.CircuitEvaluator.curve`);
    with ``positions`` they run at those positions, compared over (edge, position) pairs and
    verified by circuits of pairs (:func:`attrscope.edges.positional.position_curve`).

    ``settings``: the fields of :class:`CompareSettings` (``k``, ``ablation``, ``n_boot``,
    ``n_random``, ``seed``, ``min_asymmetry``, ``alpha``, ``method_settings``, ``normalize``,
    ``budget``, ``screen``, ``positions``, ``combine``). ``budget`` (seconds, default 15 min;
    None: no limit): when the estimated time of exact patching everywhere exceeds it, ``ap`` is
    screened by ``screen``
    (``atp``, ``atpstar`` or ``ig``; :mod:`attrscope.methods.screening`): exact on the top units
    and an audit sample, NaN elsewhere, with the audit's false-negative estimate in
    ``info["screening"]``; the plan is logged before any work and kept in ``info["plan"]``.
    ``normalize="gap"`` or ``"gap-batch"``: every result is compared as fractions of the clean -
    corrupted metric gap (:mod:`attrscope.normalize`); a sample (or batch) whose gap is below the
    floor is refused, since a flagged sample's NaN scores would enter the bootstraps. The cache
    (``cache_dir``) keeps the unnormalised results."""
    unknown = sorted(set(settings) - {f for f in CompareSettings.__dataclass_fields__})
    if unknown:
        raise ValueError(f"compare has no setting(s) {unknown}; its settings are "
                         f"{sorted(CompareSettings.__dataclass_fields__)}.")
    plan = CompareSettings(tuple(methods), tuple(directions), tuple(kinds),
                           **with_positions(settings)).check()
    if parse_setting(plan.positions) != "all":
        resolve_positions(task, plan.positions)  # a name the task lacks: one line, before work
    plan, plan_line, plan_info = budgeted(model, task, plan)
    log(plan_line)
    for line in left_out_note(plan.methods, plan.kinds, plan.positions):
        log(line)
    started = time.perf_counter()
    fingerprints = (model_fingerprint(model), task_fingerprint(task)) if cache_dir else ("", "")
    cache = ResultCache(cache_dir, fingerprints, log)
    schedule = Schedule.start(model, task, plan, plan_info, log)
    results, reused, runners = _results(model, task, plan, cache, show_progress, schedule)
    if schedule is not None:  # the plan as it ran, with any re-planning said in the report
        schedule.before_verification()
        plan = schedule.plan
        if schedule.said:
            plan_line += "; then, running slower than estimated: " + "; ".join(schedule.said)
            plan_info["reductions"] = plan_info["reductions"] + schedule.reductions
    _add_combinations(results, plan)
    comparison = Comparison(results=results,
                            kinds=list(methods_by_kind(plan.methods, plan.kinds, plan.positions)),
                            reused=reused)
    log(f"comparing: agreement of every pair ({plan.n_boot} bootstrap resamples), direction "
        "asymmetry and latent sets ...")
    _agreement_and_latent(comparison, plan)
    _verify(comparison, model, task, plan, runners.get("noising"), cache)
    comparison.failed_samples = failed_samples(task, clean_metric(results))
    comparison.settings = plan.recorded(results)
    first = next(iter(results.values()))
    comparison.info = {"model": first.meta.get("model"), "model_config": first.meta.get("model_config"),
                       "task": first.meta.get("task"), "versions": first.meta.get("versions"),
                       "device": first.meta.get("device"), "dtype": first.meta.get("dtype"),
                       "metric": first.meta.get("metric"),
                       "sign_conventions": {d: results[(plan.methods[0], d)].meta.get("sign_convention")
                                            for d in plan.directions},
                       "clean_metric_mean": float(clean_metric(results).mean()),
                       "seconds": round(time.perf_counter() - started, 1),
                       "plan": plan_line, "plan_figures": plan_info,
                       "screening": {label(*key): s.meta["screening"]
                                     for key, s in results.items() if "screening" in s.meta}}
    return comparison


def with_positions(settings: dict) -> dict:
    """``compare``'s settings with the method settings' current names, and a ``positions``
    given among them (the command line's generated ``--positions``) as compare's own
    ``positions`` (lists as tuples)."""
    method_settings = dict(current_names(settings.get("method_settings") or {}))
    positions = settings.get("positions", "all")
    if "positions" in method_settings:
        given = method_settings.pop("positions")
        if parse_setting(positions) not in ("all", parse_setting(given)):
            raise ValueError(f"positions={positions!r} and method_settings positions={given!r} "
                             "disagree; give one.")
        positions = given
    positions = parse_setting(positions)
    return {**settings, "method_settings": method_settings,
            "positions": tuple(positions) if isinstance(positions, list) else positions}


def _results(model, task: Task, plan: CompareSettings, cache: ResultCache, show_progress: bool,
             schedule: Schedule | None = None):
    """Every (method, direction) result (normalised if asked), the labels of those reused from
    the cache, and the node runners by direction (the verification reuses the noising one).
    ``schedule`` may lower a method's settings or leave it out before its first direction."""
    results: dict[tuple[str, str], Scores] = {}
    reused = []
    runners, edge_runs = {}, {}
    pending = [(m, d) for d in plan.directions for m in plan.methods]
    for d in plan.directions:
        for m in list(plan.methods):
            pending.pop(0)
            if schedule is not None:
                if not schedule.before(m, [(m, d), *pending]):
                    continue
                plan = schedule.plan
            edge = METHODS[m].granularity == "edge"
            kinds = [EDGES] if edge else scored_kinds(m, plan.kinds, plan.positions)
            if not kinds:  # left out, said by left_out_note
                continue
            if edge and d not in edge_runs:
                edge_runs[d] = EdgeRun.prepare(model, task, d)
            if not edge and d not in runners:
                runners[d] = Runner(model, task, d, [KINDS[kd] for kd in plan.kinds])
                check_finite_metrics(runners[d], task)
            if plan.normalize:  # before any method runs
                run = edge_runs[d] if edge else runners[d]
                check_has_gap(run.metric_run, run.metric_source, task.name)
            scores, was_reused = cache.get(model, task, m, d, kinds, plan.settings_of(m),
                                           edge_runs[d] if edge else runners[d], show_progress)
            results[(m, d)] = normalized_or_refused(scores, plan.normalize) if plan.normalize else scores
            if was_reused:
                reused.append(label(m, d))
            if schedule is not None:
                schedule.after(m)
    return results, reused, runners


def _add_combinations(results: dict[tuple[str, str], Scores], plan: CompareSettings) -> None:
    """Each method's latent-aware combinations, as noising results ``(METHOD:HOW, noising)``."""
    from .combine import combine_directions

    for how in plan.combine:
        for m in plan.methods:
            results[(f"{m}:{how}", "noising")] = combine_directions(
                results[(m, "denoising")], results[(m, "noising")], how,
                min_asymmetry=plan.min_asymmetry, n_boot=plan.n_boot, seed=plan.seed)


def _agreement_and_latent(comparison: Comparison, plan: CompareSettings) -> None:
    """Agreement of every pair of methods per kind and direction; with both directions, the
    direction asymmetry and latent AND/OR sets of each kind."""
    results = comparison.results
    for kind, kind_methods in methods_by_kind(plan.compared, plan.kinds, plan.positions).items():
        for d in plan.directions:
            present = [m for m in kind_methods if (m, d) in results]
            for i, a in enumerate(present):
                for b in present[i + 1:]:
                    comparison.agreements.append(
                        agreement(results[(a, d)], results[(b, d)], kind, k=plan.k,
                                  n_boot=plan.n_boot, seed=plan.seed))
        if {"denoising", "noising"} <= set(plan.directions):
            kind_results = {key: s for key, s in results.items() if key[0] in kind_methods}
            analysis = latent_analysis(kind_results, kind, plan.min_asymmetry, plan.n_boot, plan.seed)
            comparison.latent[kind] = analysis
            for m, est in analysis["asymmetry"].items():
                comparison.asymmetries[(m, kind)] = est["value"]


def _verify(comparison: Comparison, model, task: Task, plan: CompareSettings,
            runner: Runner | None, cache: ResultCache) -> None:
    """Verification by ablation of every node kind (chosen sets against random sets of the same
    size, faithfulness curves) and the faithfulness of every edge result's top circuits."""
    results, log = comparison.results, cache.log
    by_kind = methods_by_kind(plan.compared, plan.kinds, plan.positions)
    node_kinds = verifiable(by_kind, log, plan.ablation)
    ablator = None
    if node_kinds:
        ablator = ablator_at(resolve_positions(task, plan.positions), model, task,
                             how=plan.ablation, run="clean", kinds=node_kinds, runner=runner)
        if cache.folder is not None:
            ablator.checkpoint = _ablation_checkpoint(cache.folder, model, task, plan.ablation,
                                                      node_kinds, cache.fingerprints, log)
    for kind in node_kinds:
        log(f"verifying {kind} by ablation ({plan.ablation}): top-k, one-method-only, latent and "
            f"{plan.n_random} random sets per size, then faithfulness curves of {len(results)} "
            "results ...")
        node_results = {key: s for key, s in results.items() if key[0] in by_kind[kind]}
        n_components = next(iter(node_results.values()))[kind][0].numel()
        called = comparison.latent.get(kind, {}).get("calls", {})
        comparison.verification[kind] = verification_rows(
            ablator, {label(*key): s for key, s in node_results.items()}, kind,
            top_k_count(plan.k, n_components), called,
            NullTest(n_null=plan.n_random, seed=plan.seed, n_boot=plan.n_boot, alpha=plan.alpha))
        rankings = {}
        for key, s in node_results.items():
            curve = faithfulness_curve(ablator, s, kind)
            comparison.faithfulness[(label(*key), kind)] = curve
            rankings[label(*key)] = ranked_components(s, kind)
        comparison.faithfulness_notes[kind] = faithfulness_note(kind, rankings, curve["sizes"])
    if EDGES in by_kind:
        _verify_edges(comparison, model, task, plan, by_kind[EDGES], log)
    if node_kinds:
        ablator.checkpoint.discard()  # every ablation it kept is in the comparison now


def _verify_edges(comparison: Comparison, model, task: Task, plan: CompareSettings,
                  edge_methods: Sequence[str], log: Callable[[str], None]) -> None:
    """The faithfulness curve of every edge result's top circuits: the top edges, or with
    ``positions`` the top (edge, position) pairs, every other one ablated
    (:func:`attrscope.edges.positional.position_curve`)."""
    positional = parse_setting(plan.positions) != "all"
    what = "(edge, position) pairs" if positional else "edges"
    log(f"verifying edges: faithfulness of the top circuits of each edge result "
        f"({plan.ablation} ablation of the {what} outside) ...")
    evaluator = CircuitEvaluator.for_task(model, task, plan.ablation, run="clean",
                                          positions=plan.positions if positional else "all")
    for key, s in comparison.results.items():
        if key[0] in edge_methods:
            comparison.faithfulness[(label(*key), EDGES)] = (
                position_curve(evaluator, s.mean(EDGES)) if positional
                else evaluator.curve(s.mean(EDGES).flatten()))


def verifiable(by_kind: dict[str, list[str]], log: Callable[[str], None],
               how: str = "other") -> list[str]:
    """The node kinds verified by ablation: every site, at every position or at each (unit,
    position) cell (:mod:`attrscope.analysis.position_ablation`). What ``zero`` means for the
    residual stream is said in one line."""
    node = [kind for kind in by_kind if kind != EDGES]
    if how == "zero" and "resid_pre" in node:
        log("note: zero ablation of resid_pre sets the whole residual stream entering that "
            "block (and position) to 0: the embedding and every earlier block's output there.")
    return node


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
    answer there), with their prompt and answer when the task has them; none for a metric whose
    zero separates nothing (``kl``, ``answer_*``, a user metric: :meth:`Task.failing`)."""
    rows = []
    failing = task.failing(clean_metric) if hasattr(task, "failing") else clean_metric <= 0
    if failing is None:
        return rows
    for i in torch.nonzero(failing).flatten().tolist():
        pair = task.pairs[i] if i < len(getattr(task, "pairs", [])) else None
        rows.append({"sample": i, "clean_metric": float(clean_metric[i]),
                     "clean": getattr(pair, "clean", ""), "answer": str(getattr(pair, "answer", ""))})
    return rows
