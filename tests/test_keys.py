"""Result keys (:mod:`attrscope.keys`): what goes into a task's fingerprint."""

from __future__ import annotations

import dataclasses

import attrscope
from attrscope.keys import attribution_key, task_fingerprint


def test_named_positions_are_in_the_task_fingerprint(embedded_model):
    """Same tokens, other named positions: a result at positions=["S2"] reads other tokens, so
    its key must differ; the same positions again give the same key."""
    task = attrscope.load_task("ioi", embedded_model, n=4)
    assert {"S1", "S2"} <= set(task.positions)
    swapped = dataclasses.replace(task, positions={**task.positions, "S1": task.positions["S2"],
                                                   "S2": task.positions["S1"]})
    unnamed = dataclasses.replace(task, positions={"END": task.positions["END"]})
    same = dataclasses.replace(task, positions={k: v.clone() for k, v in task.positions.items()})
    assert swapped.clean_tokens is task.clean_tokens  # only the positions differ
    fingerprints = [task_fingerprint(t) for t in (task, swapped, unnamed)]
    assert len(set(fingerprints)) == 3
    assert task_fingerprint(same) == fingerprints[0]
    settings = {"positions": ["S2"]}
    key = attribution_key(embedded_model, task, "ap", "denoising", ["heads"], settings)
    assert attribution_key(embedded_model, swapped, "ap", "denoising", ["heads"], settings) != key
    assert attribution_key(embedded_model, same, "ap", "denoising", ["heads"], settings) == key
