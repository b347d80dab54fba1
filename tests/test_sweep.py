"""``attrscope sweep`` on a local Ray cluster: a grid equal to its jobs run alone, resume after
an interruption, one failing job among finished ones, and reading results back."""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import lru_cache

import pytest
import torch
from typer.testing import CliRunner

import attrscope
from attrscope.cli import app
from attrscope.sweep import (ResultStore, expand_grid, load_grid, load_sweep, resolve_model,
                             run_method, run_sweep)

GRID = {"tasks": ["ioi", "greater-than"], "methods": ["atp", "eap"],
        "directions": ["denoising", "noising"], "components": ["heads"], "n": 3, "seeds": [1]}
# Two CPUs a job: the tiny jobs run one after the other in one worker process, which imports
# torch and loads each model once (the tests' time is mostly such start-up work).
JOB_CPUS = 2


@lru_cache(maxsize=2)
def load(model):
    return attrscope.load_model(model)


def alone(job):
    """The job's result computed in this process, without Ray or the store, with the threads of
    a Ray worker of JOB_CPUS CPUs (another thread count may change the last bit of a sum)."""
    model = load(resolve_model(job.model, job.task))
    task = attrscope.load_task(job.task, model, n=job.n, seed=job.seed)
    with torch_threads(JOB_CPUS):
        return run_method(model, task, job.method, job.direction, job.components, job.settings)


@contextmanager
def torch_threads(count: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def swept(ray_cluster, tmp_path_factory):
    store = tmp_path_factory.mktemp("sweep")
    outcome = run_sweep(expand_grid(GRID), str(store), num_cpus=JOB_CPUS, show_progress=False,
                        log=lambda s: None)
    return store, outcome


def test_grid_expands_to_every_combination():
    jobs = expand_grid(GRID)
    assert len(jobs) == 8 and len(set(jobs)) == 8
    assert {j.components for j in jobs} == {("heads",), ("edges",)}
    with pytest.raises(ValueError, match=r"\[settings.ig\] names a method"):
        expand_grid({**GRID, "settings": {"ig": {"n_steps": 3}}})
    with pytest.raises(ValueError, match="unknown setting"):
        expand_grid({**GRID, "settings": {"atp": {"n_steps": 3}}})
    assert {j.metric for j in expand_grid({**GRID, "metric": "metric_fns:logit_diff"})} == \
        {"metric_fns:logit_diff"}
    with pytest.raises(ValueError, match="metric 'no_such_mod:f': cannot import module"):
        expand_grid({**GRID, "metric": "no_such_mod:f"})


def test_sweep_equals_each_job_alone(swept):
    store, outcome = swept
    assert outcome.count("done") == 8 and not outcome.skipped
    results = load_sweep(store)
    assert len(results) == 8
    for job, scores in results.items():
        reference = alone(job)
        for kind in reference.kinds:
            # a Ray worker runs with its own thread count, and BLAS sums in another order with
            # another count: equal up to float32 rounding, not bit for bit, on every machine
            torch.testing.assert_close(scores[kind], reference[kind], rtol=1e-5, atol=1e-6,
                                       msg=job.label)
    manifest = json.loads((store / "sweep.json").read_text())
    assert manifest["totals"] == {"jobs": 8, "done": 8, "failed": 0, "skipped": 0}
    assert len(load_sweep(store, method="eap", direction="noising")) == 2


def test_rerun_after_interruption_runs_only_unfinished_jobs(swept):
    store, first = swept
    jobs = expand_grid(GRID)
    # An interrupted sweep: two jobs never wrote their record, one of them not its result either.
    lost = jobs[1:3]
    before = load_sweep(store)
    for job in lost:
        (store / "jobs" / f"{job.key}.json").unlink()
    (store / first.records[lost[0].key]["result"]).unlink()
    kept = {j.key: (store / first.records[j.key]["result"]).stat().st_mtime_ns
            for j in jobs if j not in lost}
    again = run_sweep(jobs, str(store), num_cpus=JOB_CPUS, show_progress=False,
                      log=lambda s: None)
    assert sorted(again.skipped) == sorted(kept) and again.count("done") == 8
    for key, mtime in kept.items():  # finished results were not recomputed
        assert (store / again.records[key]["result"]).stat().st_mtime_ns == mtime
    after = load_sweep(store)
    assert set(after) == set(before)
    for job in lost:
        assert torch.equal(after[job]["edges" if job.is_edge else "heads"],
                           before[job]["edges" if job.is_edge else "heads"])


def test_failing_job_is_reported_while_the_rest_finish(ray_cluster, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("clean,corrupted,answer,distractor\nWhen Mary and John,When Mary and Tom,"
                   " Mary,\n")
    grid = tmp_path / "grid.toml"
    grid.write_text(f'tasks = ["ioi", "{bad}"]\nmethods = ["atp"]\ndirections = ["denoising"]\n'
                    'components = ["heads"]\nn = 3\n[ray]\nnum_cpus = 2\n')
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["sweep", "--grid", str(grid), "--out", str(store),
                                      "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "bad.csv" in result.output
    manifest = json.loads((store / "sweep.json").read_text())
    statuses = {j["job"]["task"]: j["status"] for j in manifest["jobs"]}
    assert statuses == {"ioi": "done", str(bad): "failed"}
    failed = next(j for j in manifest["jobs"] if j["status"] == "failed")
    assert "bad.csv" in failed["error"] and "TaskDataError" in failed["error"]
    assert len(load_sweep(store)) == 1


def test_compare_reuses_sweep_results(swept):
    from attrscope.analysis.compare import ResultCache, model_fingerprint, task_fingerprint

    store, _ = swept
    model = attrscope.load_model()
    task = attrscope.load_task("ioi", model, n=3, seed=1)
    messages = []
    cache = ResultCache(store / "results", (model_fingerprint(model), task_fingerprint(task)),
                        messages.append)
    scores, reused = cache.get(model, task, "atp", "noising", ["heads"], {"max_memory": None})
    assert reused, messages


def test_grid_file_and_options_are_checked(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["ioi"]\nmethods = ["apx"]\n')
    with pytest.raises(ValueError, match="Unknown method 'apx'"):
        load_grid(grid)
    grid.write_text('tasks = ["ioi"]\n[ray]\nnum_gpu = 1\n')
    with pytest.raises(ValueError, match=r"\[ray\] has unknown key"):
        load_grid(grid)
    result = CliRunner().invoke(app, ["sweep", "--task", "ioi", "--set", "ig.n_steps"])
    assert result.exit_code == 2 and "METHOD.SETTING=VALUE" in result.output


def test_store_reads_and_writes_through_fsspec_urls(tmp_path):
    store = ResultStore(f"file://{tmp_path}/s")
    store.write_json("jobs/a.json", {"status": "done"})
    assert store.read_json("jobs/a.json") == {"status": "done"} and store.list("jobs") == ["a.json"]
    scores = attrscope.Scores({"heads": torch.arange(6.).view(1, 2, 3)}, meta={"method": "ap"})
    store.save_scores("results/x.safetensors", scores)
    assert torch.equal(store.load_scores("results/x.safetensors")["heads"], scores["heads"])
    memory = ResultStore("memory://attrscope-test")
    memory.save_scores("results/x.safetensors", scores)
    assert torch.equal(memory.load_scores("results/x.safetensors")["heads"], scores["heads"])


def test_the_documented_grid_file_is_valid(tmp_path):
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "scaling.md").read_text()
    start = text.index("# grid.toml")
    (tmp_path / "grid.toml").write_text(text[start:text.index("```", start)])
    jobs = expand_grid(load_grid(tmp_path / "grid.toml"))
    assert len(jobs) == 3 * 3 * 5 * 2 and {j.settings_json for j in jobs if j.method == "ig"} == {
        '{"n_steps": 20}'}
