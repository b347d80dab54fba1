"""``compare``'s plan under a time budget: the job as asked when its estimated compute fits
:data:`COMPUTE_SHARE` of ``budget`` seconds, else fitted to it by reductions tried in a declared
order, each kept only as far as needed and never below its stated minimum:

1. **screening**: ``ap`` is screened (:mod:`attrscope.methods.screening`): ``plan.screen`` ranks
   every unit, the top units of each kind and a random audit are patched exactly, the rest NaN;
2. **fewer random sets** per size in the verification's null test, down to
   :data:`MIN_N_RANDOM` (the smallest p-value is 1 / (n_random + 1); at 20 sets it is 0.048, so
   a set can still be confirmed at alpha = 0.05);
3. **fewer integration steps** of ``ig`` (and of the edge methods' ``n_steps``), down to
   :data:`MIN_IG_STEPS`;
4. **dropping the most expensive method** (one; never ``ap``, the exact reference, nor the
   method that screens it, whose scores the screen computes anyway), its estimated cost said.

A job still over the budget after all of them runs anyway, and the plan says so. The estimate is
:func:`attrscope.estimate.estimate_seconds` for every (method, direction), calibrated on one
timed forward of the task's prompts, plus the verification's ablated passes
(:func:`attrscope.estimate.ablation_seconds`). Every reduction is said in the one plan line
before any work and kept in the report (``info["plan"]``, ``info["plan_figures"]``). While the
job runs, :class:`Schedule` re-plans what is left when the machine turns out slower than the
calibration said (same order, same floors), and says so.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..estimate import ablation_seconds, estimate_seconds, timed_forward
from ..registry import METHODS

DEFAULT_BUDGET_S = 15 * 60.0
# Ablated sets the verification runs per node kind: ~14 sets (top-k, one-method-only, latent,
# faithfulness points) per result, and random sets for each size of those (null_sizes).
SETS_PER_RESULT = 14
# The share of the budget the methods and the verification are fitted to: the rest is for the
# bootstraps, the report and a busy machine (the estimate is good to about 2x under load).
COMPUTE_SHARE = 0.75
# The reductions' floors (module docstring): 20 random sets give a p-value resolution of 1/21.
MIN_N_RANDOM = 20
MIN_IG_STEPS = 10


def job_seconds(model, task, plan, per_pass: float) -> float:
    """Estimated seconds of :func:`attrscope.analysis.compare.compare` with ``plan`` (a
    :class:`~attrscope.analysis.compare.CompareSettings`)."""
    return sum(job_parts(model, task, plan, per_pass).values())


def job_parts(model, task, plan, per_pass: float) -> dict[str, float]:
    """:func:`job_seconds` by part: each method (both directions) and ``"verification"``."""
    parts = {}
    node_methods = [m for m in plan.methods if METHODS[m].granularity == "node"]
    set_up = set()  # compare keeps one run per granularity and direction: its setup once
    for method in plan.methods:
        kinds = plan.kinds if method in node_methods else []
        granularity = METHODS[method].granularity
        parts[method] = len(plan.directions) * estimate_seconds(
            model, task, method, plan.settings_of(method), kinds, per_pass=per_pass,
            setup=granularity not in set_up)
        set_up.add(granularity)
    if node_methods:
        results = len(node_methods) * len(plan.directions)
        sets = len(plan.kinds) * (null_sizes(len(node_methods), len(plan.directions))
                                  * plan.n_random + SETS_PER_RESULT * results)
        parts["verification"] = ablation_seconds(model, task, sets, plan.ablation, per_pass)
    return parts


def null_sizes(methods: int, directions: int) -> int:
    """Sizes of set whose random null a node kind's verification draws, at most: the top k, one
    per pair of methods (the sets only one of them ranks in its top k) and, with both
    directions, one per method (its AND- and OR-like sets). 7 for three methods; measured on
    the GPT-2-small shape with two: 1 and 2 sizes (heads, neurons) against 4 counted."""
    return 1 + methods * (methods - 1) // 2 + (methods if directions > 1 else 0)


def budgeted(model, task, plan) -> tuple[object, str, dict]:
    """``plan`` as it will run, the one line that says how, and the figures behind it
    (``reductions``: one dict per reduction made, in order, with what it changed and its floor;
    ``parts_s``: the estimate of each method and of the verification, as planned).
    The plan is kept as asked when it fits ``COMPUTE_SHARE * plan.budget`` (or the budget is
    None); otherwise it is reduced in the order of the module docstring until it fits."""
    if plan.budget is None:
        return plan, "plan: exact patching everywhere (no time budget)", {
            "screened": False, "reductions": []}
    per_pass = timed_forward(model, task.clean_tokens)
    target = COMPUTE_SHARE * plan.budget
    asked = job_seconds(model, task, plan, per_pass)
    info = {"budget_s": plan.budget, "compute_target_s": round(target, 1), "per_pass_s": per_pass,
            "estimate_asked_s": round(asked, 1),
            "screened": bool(plan.method_settings.get("screen")), "reductions": []}
    if asked <= target:
        info.update(estimate_s=round(asked, 1), parts_s=_rounded(
            job_parts(model, task, plan, per_pass)))
        what = ("ap as its settings say" if _ap_given(plan) else "exact patching everywhere"
                if "ap" in plan.methods else "as asked")
        return plan, (f"plan: {what}, estimated {_when(asked)} of compute within the budget of "
                      f"{_when(plan.budget)}"), info
    fitted, reductions = plan, []
    for step in (_screen, _fewer_random_sets, _fewer_steps, _drop_methods):
        if job_seconds(model, task, fitted, per_pass) <= target:
            break
        fitted, made = step(model, task, fitted, per_pass, target)
        reductions += made
    parts = job_parts(model, task, fitted, per_pass)
    estimate = sum(parts.values())
    info.update(screened=bool(fitted.method_settings.get("screen")), reductions=reductions,
                estimate_s=round(estimate, 1), parts_s=_rounded(parts), n_random=fitted.n_random,
                p_value_resolution=round(1 / (fitted.n_random + 1), 4))
    said = "; ".join(r["said"] for r in reductions) or "nothing left to reduce"
    line = (f"plan: {said}; estimated {_when(estimate)} of compute for the budget of "
            f"{_when(plan.budget)} (as asked: about {_when(asked)})")
    if estimate > target:
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
        line += ("; STILL OVER the budget after every reduction, mostly " + " and ".join(
            f"{name} ({_when(seconds)})" for name, seconds in largest) + ": lower --n")
    return fitted, line, info


def _rounded(parts: dict[str, float]) -> dict[str, float]:
    return {name: round(seconds, 1) for name, seconds in parts.items()}


def _ap_given(plan) -> bool:
    return bool(plan.method_settings.get("screen") or plan.method_settings.get("units"))


def _screen(model, task, plan, per_pass: float, target: float):
    """Step 1: ``ap`` screened by ``plan.screen`` (unless its settings already say how)."""
    if "ap" not in plan.methods or _ap_given(plan):
        return plan, []
    screened = replace(plan, method_settings={**plan.method_settings, "screen": plan.screen})
    ap = {**METHODS["ap"].defaults, **screened.settings_of("ap")}
    return screened, [{"reduction": "screening", "method": "ap", "screen": plan.screen,
                       "said": f"screened exact patching ({plan.screen} ranks every unit; the "
                               f"top {ap['screen_top_k']} of each kind plus {ap['screen_audit']} "
                               "random ones are patched exactly, the rest NaN)"}]


def _fewer_random_sets(model, task, plan, per_pass: float, target: float):
    """Step 2: the most random sets per size, down to :data:`MIN_N_RANDOM`, that fit."""
    if plan.n_random <= MIN_N_RANDOM or not any(
            METHODS[m].granularity == "node" for m in plan.methods):
        return plan, []
    n_random = _largest_fitting(lambda r: job_seconds(model, task, replace(plan, n_random=r),
                                                      per_pass),
                                MIN_N_RANDOM, plan.n_random, target)
    resolution = 1 / (n_random + 1)
    return replace(plan, n_random=n_random), [{
        "reduction": "random sets", "from": plan.n_random, "to": n_random,
        "minimum": MIN_N_RANDOM, "p_value_resolution": round(resolution, 4),
        "said": f"{plan.n_random}\u2192{n_random} random sets per size (smallest p-value "
                f"1/{n_random + 1} = {resolution:.3f})"}]


def _fewer_steps(model, task, plan, per_pass: float, target: float):
    """Step 3: the most integration steps, down to :data:`MIN_IG_STEPS`, that fit (``n_steps``
    is one setting for every method that has it: lowered only when none has fewer)."""
    with_steps = [m for m in plan.methods if "n_steps" in METHODS[m].defaults]
    if "ig" not in with_steps:
        return plan, []
    current = {m: {**METHODS[m].defaults, **plan.settings_of(m)}["n_steps"] for m in with_steps}
    if current["ig"] <= MIN_IG_STEPS or min(current.values()) < current["ig"]:
        return plan, []

    def with_steps_of(steps: int):
        return replace(plan, method_settings={**plan.method_settings, "n_steps": steps})

    steps = _largest_fitting(lambda s: job_seconds(model, task, with_steps_of(s), per_pass),
                             MIN_IG_STEPS, current["ig"], target)
    names = "/".join(with_steps)
    return with_steps_of(steps), [{
        "reduction": "integration steps", "methods": with_steps, "from": current["ig"],
        "to": steps, "minimum": MIN_IG_STEPS,
        "said": f"{names} {current['ig']}\u2192{steps} steps"}]


def _drop_methods(model, task, plan, per_pass: float, target: float):
    """Step 4: the most expensive method left out, never ``ap`` (the exact reference) nor the
    method that screens it (the screen computes its scores anyway); one method at most."""
    keep = {"ap", plan.method_settings.get("screen") or "ap"}
    droppable = [m for m in plan.methods if m not in keep]
    if not droppable:
        return plan, []
    parts = job_parts(model, task, plan, per_pass)
    costly = max(droppable, key=lambda m: parts[m])
    return replace(plan, methods=tuple(m for m in plan.methods if m != costly)), [{
        "reduction": "method left out", "method": costly, "estimate_s": round(parts[costly], 1),
        "said": f"{costly} left out (the most expensive method, about {_when(parts[costly])}, "
                "and the job was still over the budget)"}]


def _largest_fitting(cost, low: int, high: int, target: float) -> int:
    """The largest integer in [low, high] whose ``cost`` fits ``target`` (cost increasing),
    else ``low``."""
    if cost(low) > target:
        return low
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= target else (low, middle - 1)
    return low


def _when(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"



class Schedule:
    """Keeps a fitted plan within its budget while it runs: a machine that slows down after the
    plan was made (other processes taking the cores) would otherwise overrun it by the ratio of
    the slow-down. After each result it counts the estimated seconds of what has run; before a
    method's first direction (and before the verification) it scales the estimate of what is
    left by how much slower than estimated the run has been so far, and when that overruns the
    budget's compute share it applies the same reductions, the same floors: the method's
    integration steps, then leaving it out (never ``ap`` nor its screen), then fewer random
    sets. Each change is logged and kept in :attr:`said` and :attr:`reductions`."""

    def __init__(self, model, task, plan, per_pass: float, log=print):
        self.model, self.task, self.plan, self.per_pass, self.log = model, task, plan, per_pass, log
        self.clock = time.perf_counter  # seconds; a test may set another
        self.started = self.clock()
        self.done_estimate = 0.0
        self.begun: set[str] = set()
        self.said: list[str] = []
        self.reductions: list[dict] = []

    @classmethod
    def start(cls, model, task, plan, info: dict, log=print) -> "Schedule | None":
        """The schedule of a plan :func:`budgeted` made (None without a budget)."""
        per_pass = info.get("per_pass_s")
        return None if plan.budget is None or not per_pass else cls(model, task, plan, per_pass, log)

    def _method_seconds(self, plan, method: str) -> float:
        """Estimated seconds of one direction of ``method`` under ``plan``: its share of the
        whole plan, so a run's setup is counted once, with the first method that uses it."""
        return job_parts(self.model, self.task, plan, self.per_pass)[method] / len(plan.directions)

    def _left(self, plan, pending: list[tuple[str, str]]) -> float:
        parts = job_parts(self.model, self.task, plan, self.per_pass)
        methods = sum(self._method_seconds(plan, m) for m, _ in pending if m in plan.methods)
        return methods + parts.get("verification", 0.0)

    def _over(self, plan, pending) -> tuple[bool, float]:
        elapsed = self.clock() - self.started
        slower = max(1.0, elapsed / self.done_estimate) if self.done_estimate > 0 else 1.0
        left = slower * self._left(plan, pending)
        return elapsed + left > COMPUTE_SHARE * plan.budget, slower

    def before(self, method: str, pending: list[tuple[str, str]]) -> bool:
        """Whether ``method`` runs now (False: left out); ``pending``: the (method, direction)
        pairs still to compute, this one first. Only before a method's first direction."""
        plan = self.plan
        if method in self.begun:  # a later direction: as the first ran
            return method in plan.methods
        self.begun.add(method)
        over, slower = self._over(plan, pending)
        if not over:
            return True
        target = COMPUTE_SHARE * plan.budget - (self.clock() - self.started)
        if "n_steps" in METHODS[method].defaults:
            steps = {**METHODS[method].defaults, **plan.settings_of(method)}["n_steps"]
            if method == "ig" and steps > MIN_IG_STEPS:
                def with_steps(s):
                    return replace(plan, method_settings={**plan.method_settings, "n_steps": s})
                fits = _largest_fitting(lambda s: slower * self._left(with_steps(s), pending),
                                        MIN_IG_STEPS, steps, target)
                plan = with_steps(fits)
                self._say(slower, f"{method} {steps}\u2192{fits} steps", {
                    "reduction": "integration steps", "methods": [method], "from": steps,
                    "to": fits, "minimum": MIN_IG_STEPS})
        keep = {"ap", plan.method_settings.get("screen") or "ap"}
        if slower * self._left(plan, pending) > target and method not in keep:
            plan = replace(plan, methods=tuple(m for m in plan.methods if m != method))
            self._say(slower, f"{method} left out", {"reduction": "method left out",
                                                      "method": method})
        self.plan = plan
        return method in plan.methods

    def after(self, method: str) -> None:
        self.done_estimate += self._method_seconds(self.plan, method)

    def before_verification(self) -> None:
        """Fewer random sets (down to the floor) when the verification would overrun."""
        plan = self.plan
        over, slower = self._over(plan, [])
        if not over or plan.n_random <= MIN_N_RANDOM:
            return
        target = COMPUTE_SHARE * plan.budget - (self.clock() - self.started)
        fits = _largest_fitting(lambda r: slower * self._left(replace(plan, n_random=r), []),
                                MIN_N_RANDOM, plan.n_random, target)
        self.plan = replace(plan, n_random=fits)
        self._say(slower, f"{plan.n_random}\u2192{fits} random sets per size (smallest p-value "
                          f"1/{fits + 1} = {1 / (fits + 1):.3f})", {
                              "reduction": "random sets", "from": plan.n_random, "to": fits,
                              "minimum": MIN_N_RANDOM, "p_value_resolution": round(1 / (fits + 1), 4)})

    def _say(self, slower: float, what: str, record: dict) -> None:
        line = f"re-plan: running {slower:.1f}x slower than estimated so far: {what}"
        self.log(line)
        self.said.append(what)
        self.reductions.append({**record, "said": what, "slower": round(slower, 2),
                                "at_s": round(self.clock() - self.started, 1)})
