"""Ablation of (unit, position) cells (issue 23) against plain TransformerLens hooks, one hook
per cell, and against per-position exact patching."""

import functools

import pytest
import torch

from attrscope import attribute
from attrscope.components import KINDS, Component
from attrscope.engine import hooks_attached
from attrscope.analysis.ablation import Ablator
from attrscope.analysis.position_ablation import CellAblator
from attrscope.sites import resolve_positions

CELLS = [Component("heads", 0, 1, "S2"), Component("heads", 1, 3, "END"),
         Component("heads", 2, 2, "S2"), Component("neurons", 1, 5, "END"),
         Component("neurons", 0, 70, "S1"), Component("heads", 0, 1, "END")]


def _one_cell_hook(unit, at, replacement, act, hook=None):
    act = act.clone()
    for i in range(act.shape[0]):  # each prompt at its own token of the name
        p = int(at[i])
        act[i, p, unit] = replacement[i if replacement.shape[0] > 1 else 0, p, unit].to(act.dtype)
    return act


def one_hook_per_cell_metric(ablator, task, cells):
    """Oracle: a forward of the run prompts with one hook per cell, each bound with partial."""
    hooks = []
    for c in cells:
        name = KINDS[c.kind].hook_name(c.layer)
        hooks.append((name, functools.partial(_one_cell_hook, c.unit, task.positions[c.position],
                                              ablator.replacements[name])))
    with torch.no_grad(), hooks_attached(ablator.model, hooks):
        logits = ablator.model(ablator.run_tokens)
    return task.metric(logits)


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_cells_ablated_in_one_run_equal_one_hook_per_cell(random_model, random_task, how):
    positions = resolve_positions(random_task, ["S1", "S2", "END"])
    ablator = CellAblator(positions, random_model, random_task, how=how)
    sets = [CELLS, CELLS[:2], CELLS[3:]]
    got = ablator.metrics(sets)
    for s, cells in enumerate(sets):
        expected = one_hook_per_cell_metric(ablator, random_task, cells)
        torch.testing.assert_close(got[s], expected.float(), atol=1e-4, rtol=0)
    assert (got[0] - ablator.base).abs().max() > 1e-3  # the ablation does something
    # the same unit at every position is another ablation than at one position
    everywhere = Ablator(random_model, random_task, how=how).metrics(
        [[Component("heads", 0, 1), Component("heads", 1, 3)]])[0]
    assert (got[1] - everywhere).abs().max() > 1e-4


def test_other_ablation_of_one_cell_is_noising_patching_at_that_position(random_model,
                                                                          random_task):
    names = ["S2", "END"]
    scores = attribute(random_model, random_task, "ap", "noising", "heads,neurons",
                       positions=names, show_progress=False)
    ablator = CellAblator(resolve_positions(random_task, names), random_model, random_task,
                          how="other", run="clean")
    for c in [c for c in CELLS if c.position in names]:
        change = ablator.metrics([[c]])[0] - ablator.base
        torch.testing.assert_close(change, scores[c.kind][:, c.layer, c.unit,
                                                          names.index(c.position)],
                                   atol=1e-4, rtol=0)


def test_cells_pool_and_refusals(random_model, random_task):
    ablator = CellAblator(resolve_positions(random_task, ["S2", "END"]), random_model,
                          random_task)
    pool = ablator.components("heads")
    cfg = random_model.cfg
    assert len(pool) == cfg.n_layers * cfg.n_heads * 2 and pool[1].label == "0.0@END"
    with pytest.raises(ValueError, match=r"heads 0\.1@S1: this ablator replaces cells at "
                                         r"positions \['S2', 'END'\]"):
        ablator.metrics([[Component("heads", 0, 1, "S1")]])
