"""Sharded ``ap`` and ``exact`` edges on Ray actors: bit-identical to one process, also when a
worker is killed mid-run (Ray restarts it; no shard lost or counted twice)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from test_sweep import torch_threads

import attrscope
from attrscope.api import attribute_edges
from attrscope.keys import model_fingerprint, result_key, task_fingerprint
from attrscope.registry import METHODS
from attrscope.shard import ShardPool, ShardSizing, ap_pass_quantum, plan_shards
from attrscope.sweep import Job

# 16 samples in groups of similar span for ap (as many units a pass as copies of the largest
# group fit in 40 rows); exact stacks 2 copies a pass.
N, ROWS = 16, 40


@pytest.fixture(scope="module")
def task16(random_model):
    return attrscope.load_task("ioi", random_model, n=N, seed=3)


@pytest.fixture(scope="module")
def pool(ray_cluster, random_model_dir):
    """Two actors holding the random model and the prompts of ``task16``."""
    source = Job(str(random_model_dir), "ioi", "ap", "denoising", ("heads",), n=N, seed=3)
    with ShardPool(source, 2) as the_pool:
        yield the_pool


def test_sharded_ap_equals_one_process(pool, random_model, task16):
    merged = pool.run("ap", "denoising", ["heads", "neurons"], max_batch_rows=ROWS,
                      log=lambda s: None)
    assert merged.meta["sharding"]["shards"] > 2
    with torch_threads(1):  # as an actor of one CPU
        single = attrscope.attribute(random_model, task16, "ap", "denoising",
                                     ["heads", "neurons"], show_progress=False,
                                     max_batch_rows=ROWS)
    for kind in ("heads", "neurons"):
        assert torch.equal(merged[kind], single[kind]), kind
    assert merged.meta["settings"]["max_batch_rows"] == ROWS
    # one result identity: the key the one-process result gets in attribute's and compare's
    # caches (batching settings are not part of it)
    assert merged.meta["cache_key"] == result_key(
        model_fingerprint(random_model), task_fingerprint(task16), "ap", "denoising",
        ["heads", "neurons"], {**METHODS["ap"].defaults, "max_batch_rows": ROWS},
        str(single["heads"].dtype), "cpu")


def test_sharded_exact_survives_a_killed_worker(pool, random_model, task16):
    killed = []

    def kill_first_actor(done, pids):
        if done == 1:  # the actor has just been handed its next shard
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    merged = pool.run("exact", "noising", max_batch_rows=ROWS, shards_per_actor=3,
                      on_result=kill_first_actor, log=lambda s: None)
    assert killed and merged.meta["sharding"]["restarted_actors"] == 1
    with torch_threads(1):  # as an actor of one CPU
        single = attribute_edges(random_model, task16, "exact", "noising",
                                 max_batch_rows=ROWS, show_progress=False)
    assert torch.equal(merged["edges"], single["edges"])


def test_shards_fall_on_pass_bounds(random_model, random_task):
    assert ap_pass_quantum([5], 20) == 4
    assert ap_pass_quantum([13, 12, 13], 64) == 4  # 4 copies of the largest group a pass
    from attrscope.engine import task_groups

    from attrscope.arch import config_of
    from attrscope.arch.memory import Widths

    groups = task_groups(random_task, Widths.of_config(config_of(random_model)))
    quantum = 20 // max(len(g) for g in groups)
    plan = plan_shards(random_model, random_task, "ap", ["neurons"], 2,
                       ShardSizing(max_batch_rows=20))
    sizes = [len(args[1]) for _, args in plan.shards]
    assert plan.quantum == quantum and all(s % quantum == 0 for s in sizes[:-1])
    assert sum(sizes) == random_model.cfg.d_mlp
    plan = plan_shards(random_model, random_task, "exact", ["edges"], 2,
                       ShardSizing(max_memory="1MB"))
    assert plan.rows >= 1 and all((b - a) % plan.quantum == 0 for _, (a, b, _) in plan.shards[:-1])
    with pytest.raises(ValueError, match=f"multiple of {quantum}"):
        plan_shards(random_model, random_task, "ap", ["heads"], 2,
                    ShardSizing(max_batch_rows=20, shard_size=quantum + 1))


def test_shard_command_refuses_other_methods():
    from typer.testing import CliRunner

    from attrscope.cli import app

    result = CliRunner().invoke(app, ["shard", "--method", "ig"])
    assert result.exit_code == 2 and "choose from ap, exact" in result.output
