"""compare's planner: reductions in their declared order, each said and recorded, each only as
far as needed and never below its floor. The timed forward is replaced by a fixed time per
prompt, so every decision here follows from the cost model, not from this machine's speed."""

from dataclasses import replace

import pytest
import torch

import attrscope
from attrscope.analysis import budget
from attrscope.analysis.budget import (COMPUTE_SHARE, MIN_IG_STEPS, MIN_N_RANDOM, budgeted,
                                       job_seconds)
from attrscope.analysis.compare import CompareSettings, compare

PER_PASS = 0.01  # seconds per prompt of a full forward, for every plan here


@pytest.fixture
def fixed_forward(monkeypatch):
    monkeypatch.setattr(budget, "timed_forward", lambda model, tokens: PER_PASS)


def _budget_for(model, task, plan) -> float:
    """The budget whose compute share is ``plan``'s estimate (by a hair more: dividing by the
    share and multiplying back may round below it)."""
    return job_seconds(model, task, plan, PER_PASS) / COMPUTE_SHARE * (1 + 1e-9)


def test_every_reduction_in_order_at_its_floor_and_said(random_model, random_task, fixed_forward):
    plan = CompareSettings(methods=("ap", "atp", "ig"), n_random=100, budget=1e-6)
    fitted, line, info = budgeted(random_model, random_task, plan)
    kinds = [r["reduction"] for r in info["reductions"]]
    assert kinds == ["screening", "random sets", "integration steps", "method left out"]
    assert fitted.method_settings["screen"] == "atp"
    assert fitted.n_random == MIN_N_RANDOM and info["reductions"][1]["minimum"] == MIN_N_RANDOM
    assert info["p_value_resolution"] == pytest.approx(1 / (MIN_N_RANDOM + 1), abs=1e-4)
    assert fitted.method_settings["n_steps"] == MIN_IG_STEPS
    assert info["reductions"][2]["from"] == 50 and info["reductions"][2]["to"] == MIN_IG_STEPS
    # ap (the exact reference) and atp (its screen) stay; ig, the most expensive, goes
    assert fitted.methods == ("ap", "atp") and info["reductions"][3]["method"] == "ig"
    said = [r["said"] for r in info["reductions"]]
    assert line.startswith("plan: screened exact patching (atp ranks every unit")
    assert [line.index(s) for s in said] == sorted(line.index(s) for s in said)
    assert f"100\u2192{MIN_N_RANDOM} random sets per size (smallest p-value 1/21 = 0.048)" in line
    assert f"ig 50\u2192{MIN_IG_STEPS} steps" in line and "STILL OVER the budget" in line


def test_each_reduction_goes_only_as_far_as_needed(random_model, random_task, fixed_forward):
    asked = CompareSettings(methods=("ap", "atp", "ig"), n_random=100)
    screened = replace(asked, method_settings={"screen": "atp"})
    # a budget that screening and 60 random sets fill exactly: no fewer sets, ig untouched
    room = replace(asked, budget=_budget_for(random_model, random_task,
                                             replace(screened, n_random=60)))
    fitted, line, info = budgeted(random_model, random_task, room)
    assert [r["reduction"] for r in info["reductions"]] == ["screening", "random sets"]
    assert fitted.n_random == 60 and "n_steps" not in fitted.method_settings
    assert fitted.methods == asked.methods and "STILL OVER" not in line
    # room for screening and 30 ig steps at the floor of random sets
    steps = replace(screened, n_random=MIN_N_RANDOM, method_settings={"screen": "atp",
                                                                     "n_steps": 30})
    fitted, _, info = budgeted(random_model, random_task,
                               replace(asked, budget=_budget_for(random_model, random_task, steps)))
    assert fitted.n_random == MIN_N_RANDOM and fitted.method_settings["n_steps"] == 30
    assert [r["reduction"] for r in info["reductions"]][-1] == "integration steps"


def test_a_job_that_fits_is_left_as_asked(random_model, random_task, fixed_forward):
    plan = CompareSettings(methods=("ap", "atp", "ig"), n_random=100)
    roomy = replace(plan, budget=2 * _budget_for(random_model, random_task, plan))
    fitted, line, info = budgeted(random_model, random_task, roomy)
    assert fitted == roomy and info["reductions"] == []
    assert line.startswith("plan: exact patching everywhere, estimated")
    fitted, line, _ = budgeted(random_model, random_task, replace(plan, budget=None))
    assert fitted.budget is None and fitted.n_random == 100 and "no time budget" in line


def test_a_given_screen_is_kept_and_its_method_never_left_out(random_model, random_task,
                                                              fixed_forward):
    plan = CompareSettings(methods=("ap", "ig", "atp"), n_random=10, budget=1e-6,
                           method_settings={"screen": "ig", "n_steps": 5})
    fitted, line, info = budgeted(random_model, random_task, plan)
    # below the floors already: nothing lowered; atp is the one left out, not ig (the screen)
    assert [r["reduction"] for r in info["reductions"]] == ["method left out"]
    assert fitted.methods == ("ap", "ig") and fitted.n_random == 10
    assert fitted.method_settings == {"screen": "ig", "n_steps": 5}


def test_compare_under_a_tight_budget_verifies_as_plain_exact_patching(
        random_model, random_task, fixed_forward):
    """The planner screens ap and lowers the null; the units compare verified exactly equal
    plain exact patching (ap without screening) of those units, and the verification ran with
    the lowered number of random sets."""
    log: list[str] = []
    c = compare(random_model, random_task, ("ap", "atp"), ("denoising", "noising"),
                ("heads", "neurons"), k=3, n_boot=20, n_random=50, budget=1e-6,
                method_settings={"screen_top_k": 4, "screen_audit": 5}, show_progress=False,
                log=log.append)
    assert log[0] == c.info["plan"] and "50\u219220 random sets per size" in log[0]
    assert c.settings["n_random"] == MIN_N_RANDOM
    nulls = [r for rows in c.verification.values() for r in rows if r["source"] == "random"]
    assert nulls and all(r["n_null"] == MIN_N_RANDOM or r["exhaustive"] for r in nulls)
    for direction in ("denoising", "noising"):
        screened = c.results[("ap", direction)]
        for kind in ("heads", "neurons"):
            exact = screened.extras[f"exact.{kind}"] > 0  # [layers, units]
            assert int(exact.sum()) == 9
            units = {layer: torch.nonzero(exact[layer]).flatten().tolist()
                     for layer in range(exact.shape[0])}
            plain = attrscope.attribute(random_model, random_task, "ap", direction, kind,
                                        show_progress=False,
                                        units={kind: {k: v for k, v in units.items() if v}})
            torch.testing.assert_close(screened[kind][:, exact], plain[kind][:, exact],
                                       atol=1e-4, rtol=0)
            assert torch.isnan(screened[kind][:, ~exact]).all()
            assert not torch.isnan(plain[kind][:, exact]).any()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _schedule(model, task, plan):
    from attrscope.analysis.budget import Schedule

    schedule = Schedule(model, task, plan, PER_PASS, log=lambda _: None)
    schedule.clock = clock = FakeClock()
    schedule.started = 0.0
    return schedule, clock


def test_a_run_slower_than_planned_lowers_ig_then_leaves_it_out(random_model, random_task):
    """The plan fits its budget at the estimated speed; the run then goes 1.5x (or 50x) slower
    than estimated: before ig starts, its steps are lowered to what fits (not below the floor),
    or it is left out, and the reason is said; ap and its screen always run."""
    from attrscope.analysis.budget import Schedule

    plan = CompareSettings(methods=("ap", "atp", "ig"), n_random=MIN_N_RANDOM,
                           method_settings={"screen": "atp", "n_steps": 40})
    plan = replace(plan, budget=1.01 * _budget_for(random_model, random_task, plan))
    order = [(m, d) for d in plan.directions for m in plan.methods]
    for slower, expected in ((1.5, "steps"), (50.0, "left out")):
        schedule, clock = _schedule(random_model, random_task, plan)
        for i, (m, d) in enumerate(order[:2]):  # ap and atp, denoising
            assert schedule.before(m, order[i:])
            clock.now += slower * schedule._method_seconds(schedule.plan, m)
            schedule.after(m)
        runs = schedule.before("ig", order[2:])
        kinds = [r["reduction"] for r in schedule.reductions]
        if expected == "steps":
            steps = schedule.plan.method_settings["n_steps"]
            assert runs and kinds == ["integration steps"] and MIN_IG_STEPS <= steps < 40
            assert schedule.said == [f"ig 40\u2192{steps} steps"]
            # what is left now fits at the speed seen so far (and one more step would not)
            left = Schedule._left(schedule, schedule.plan, order[2:])
            assert clock.now + slower * left <= COMPUTE_SHARE * plan.budget
            more = replace(schedule.plan, method_settings={"screen": "atp", "n_steps": steps + 1})
            assert clock.now + slower * Schedule._left(schedule, more, order[2:]) > \
                COMPUTE_SHARE * plan.budget
        else:
            assert not runs and kinds[-1] == "method left out" and "ig left out" in schedule.said
            assert schedule.plan.methods == ("ap", "atp")
        assert schedule.before("ap", order[3:]) and schedule.before("atp", order[4:])


def test_a_run_on_schedule_is_left_alone(random_model, random_task):
    plan = CompareSettings(methods=("ap", "atp", "ig"), n_random=50,
                           method_settings={"screen": "atp", "n_steps": 40})
    plan = replace(plan, budget=1.01 * _budget_for(random_model, random_task, plan))
    order = [(m, d) for d in plan.directions for m in plan.methods]
    schedule, clock = _schedule(random_model, random_task, plan)
    for i, (m, d) in enumerate(order):
        assert schedule.before(m, order[i:])
        clock.now += 0.9 * schedule._method_seconds(schedule.plan, m)  # a little faster
        schedule.after(m)
    schedule.before_verification()
    assert schedule.plan == plan and schedule.said == []


def test_the_schedule_counts_each_runs_setup_once(random_model, random_task):
    """A run's setup (its caches and self-check) is paid once per direction and granularity:
    the schedule's per-method estimates, over every method and direction, plus the
    verification add up to the plan's own estimate (counting setup per method overshoots)."""
    from attrscope.analysis.budget import job_parts, job_seconds

    plan = CompareSettings(methods=("ap", "atp", "ig"), n_random=MIN_N_RANDOM,
                           method_settings={"n_steps": 10})
    schedule, _ = _schedule(random_model, random_task, plan)
    per_method = sum(schedule._method_seconds(plan, m) for m in plan.methods
                     for _ in plan.directions)
    verification = job_parts(random_model, random_task, plan, PER_PASS)["verification"]
    assert per_method + verification == pytest.approx(
        job_seconds(random_model, random_task, plan, PER_PASS), rel=1e-9)
