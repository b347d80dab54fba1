"""``compare``'s plan under a time budget: exact patching everywhere when the estimated time of
the whole job fits ``budget`` seconds, screened exact patching (:mod:`attrscope.methods.screening`)
otherwise. The estimate is :func:`attrscope.estimate.estimate_seconds` for every (method,
direction), calibrated on one timed forward of the task's prompts, plus the verification's
ablated forwards; the decision is said in one line before any work and kept in the report.
"""

from __future__ import annotations

from dataclasses import replace

from ..estimate import estimate_seconds, timed_forward
from ..registry import METHODS

DEFAULT_BUDGET_S = 15 * 60.0
# Ablated sets the verification runs per node kind: about 7 sizes' random sets, and ~14 sets
# (top-k, one-method-only, latent, faithfulness points) per result; each a forward of the task.
NULL_SIZES, SETS_PER_RESULT = 7, 14


def job_seconds(model, task, plan, per_pass: float) -> float:
    """Estimated seconds of :func:`attrscope.analysis.compare.compare` with ``plan`` (a
    :class:`~attrscope.analysis.compare.CompareSettings`)."""
    return sum(job_parts(model, task, plan, per_pass).values())


def job_parts(model, task, plan, per_pass: float) -> dict[str, float]:
    """:func:`job_seconds` by part: each method (both directions) and ``"verification"``."""
    parts = {}
    node_methods = [m for m in plan.methods if METHODS[m].granularity == "node"]
    for method in plan.methods:
        kinds = plan.kinds if method in node_methods else []
        parts[method] = len(plan.directions) * estimate_seconds(
            model, task, method, plan.settings_of(method), kinds, per_pass=per_pass)
    if node_methods:
        results = len(node_methods) * len(plan.directions)
        sets = len(plan.kinds) * (NULL_SIZES * plan.n_random + SETS_PER_RESULT * results)
        parts["verification"] = sets * task.n * per_pass
    return parts


def budgeted(model, task, plan) -> tuple[object, str, dict]:
    """``plan`` as it will run, the one line that says how, and the figures behind it. ``ap``
    stays exact everywhere when the job fits ``plan.budget`` (or the budget is None, or ``ap``
    already has a ``screen`` or ``units`` setting); otherwise it is screened by ``plan.screen``."""
    if "ap" not in plan.methods or plan.budget is None:
        return plan, "plan: exact patching everywhere (no time budget)", {"screened": False}
    if plan.method_settings.get("screen") or plan.method_settings.get("units"):
        return plan, "plan: ap as its settings say (screen or units given)", {
            "screened": bool(plan.method_settings.get("screen"))}
    per_pass = timed_forward(model, task.clean_tokens)
    exact = job_seconds(model, task, plan, per_pass)
    info = {"budget_s": plan.budget, "estimate_exact_s": round(exact, 1), "screened": False}
    if exact <= plan.budget:
        return plan, (f"plan: exact patching everywhere, estimated {_when(exact)} within the "
                      f"budget of {_when(plan.budget)}"), info
    screened = replace(plan, method_settings={**plan.method_settings, "screen": plan.screen})
    parts = job_parts(model, task, screened, per_pass)
    estimate = sum(parts.values())
    ap = {**METHODS["ap"].defaults, **screened.settings_of("ap")}
    info.update(screened=True, estimate_screened_s=round(estimate, 1))
    line = (f"plan: screened exact patching ({plan.screen} ranks every unit; the top "
            f"{ap['screen_top_k']} of each kind plus {ap['screen_audit']} random ones are patched "
            f"exactly, the rest NaN), estimated {_when(estimate)}: exact everywhere would take "
            f"about {_when(exact)}, over the budget of {_when(plan.budget)}")
    if estimate > plan.budget:
        largest = sorted(parts.items(), key=lambda kv: -kv[1])[:2]
        line += ("; still over the budget, mostly " + " and ".join(
            f"{name} ({_when(seconds)})" for name, seconds in largest)
            + ": lower --n, --n-random or ig's --n-steps, or leave a method out")
    return screened, line, info


def _when(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
