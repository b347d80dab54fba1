"""Ablation against plain hooks, one component per hook (the seed's late-binding bug)."""

import functools

import pytest
import torch

from attrscope import attribute
from attrscope.analysis.ablation import Ablator, Component, parse_component, per_position_mean
from attrscope.components import KINDS
from attrscope.engine import hooks_attached

SETS = [
    Component("heads", 0, 1), Component("heads", 0, 3), Component("heads", 2, 2),
    Component("neurons", 1, 5), Component("neurons", 1, 70), Component("neurons", 2, 0),
]


def _one_component_hook(component, replacement, act, hook=None):
    act = act.clone()
    act[:, :, component.unit] = replacement[:, :act.shape[1], component.unit].to(act.dtype)
    return act


def chained_single_hooks_metric(ablator, components):
    """Oracle: one hook per component, each bound to its own component with partial."""
    task = ablator.task
    hooks = [(KINDS[c.kind].hook_name(c.layer),
              functools.partial(_one_component_hook, c, ablator.replacements[KINDS[c.kind].hook_name(c.layer)]))
             for c in components]
    with torch.no_grad(), hooks_attached(ablator.model, hooks):
        logits = ablator.model(ablator.run_tokens)
    return task.metric(logits)


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_ablating_k_components_in_one_run_equals_chained_single_hooks(random_model, random_task, how):
    ablator = Ablator(random_model, random_task, how=how)
    got = ablator.metrics([SETS])[0]
    expected = chained_single_hooks_metric(ablator, SETS)
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=0)
    assert (got - ablator.base).abs().max() > 1e-3  # the ablation does something


def test_sets_in_one_pass_equal_sets_alone_and_differ(random_model, random_task):
    many = Ablator(random_model, random_task, how="mean").metrics([SETS[:1], SETS[1:2], SETS])
    separate = Ablator(random_model, random_task, how="mean")  # a fresh ablator, one set a call
    for i, components in enumerate([SETS[:1], SETS[1:2], SETS]):
        alone = separate.metrics([components])[0]
        torch.testing.assert_close(many[i], alone, atol=1e-4, rtol=0)
    assert (many[0] - many[1]).abs().max() > 1e-4  # different components, different results


def test_other_ablation_of_one_component_is_noising_patching(random_model, random_task):
    # ap of just the units of SETS (the same indices in every layer): the same exact patching
    units = {kind: sorted({c.unit for c in SETS if c.kind == kind}) for kind in ("heads", "neurons")}
    scores = attribute(random_model, random_task, "ap", "noising", "heads,neurons",
                       show_progress=False, units=units)
    ablator = Ablator(random_model, random_task, how="other", run="clean")
    for c in SETS:
        change = ablator.metrics([[c]])[0] - ablator.base
        torch.testing.assert_close(change, scores[c.kind][:, c.layer, c.unit], atol=1e-4, rtol=0)


def test_per_position_mean_excludes_padding():
    acts = torch.tensor([[[1.0], [2.0], [99.0]], [[3.0], [4.0], [6.0]]])  # [n=2, pos=3, 1]
    mean = per_position_mean(acts, torch.tensor([2, 3]), seq_len=4)
    overall = (1 + 2 + 3 + 4 + 6) / 5
    assert mean.flatten().tolist() == pytest.approx([2.0, 3.0, 6.0, overall])


def test_parse_component_and_bad_options(random_model, random_task):
    cfg = random_model.cfg
    assert parse_component("2.3", "heads", cfg) == Component("heads", 2, 3)
    with pytest.raises(ValueError, match=r"layer 9 does not exist; the model has 3 layers \(0-2\)"):
        parse_component("9.1", "heads", cfg)
    with pytest.raises(ValueError, match=r"head 4 does not exist; the model has 4 heads per layer"):
        parse_component("1.4", "heads", cfg)
    with pytest.raises(ValueError, match="LAYER.NEURON"):
        parse_component("1.x", "neurons", cfg)
    with pytest.raises(ValueError, match="choose from zero, mean, other"):
        Ablator(random_model, random_task, how="resample")
    with pytest.raises(ValueError, match="layer 7"):
        Ablator(random_model, random_task).metrics([[Component("heads", 7, 0)]])


def test_a_matching_runner_is_reused_and_a_mismatched_one_is_not(random_model, random_task):
    from attrscope.engine import Runner

    noising = Runner(random_model, random_task, "noising", [KINDS["heads"], KINDS["neurons"]])
    assert Ablator(random_model, random_task, runner=noising).runner is noising
    denoising = Runner(random_model, random_task, "denoising", [KINDS["heads"], KINDS["neurons"]])
    assert Ablator(random_model, random_task, runner=denoising).runner is not denoising
    heads_only = Runner(random_model, random_task, "noising", [KINDS["heads"]])
    assert Ablator(random_model, random_task, runner=heads_only).runner is not heads_only


@pytest.mark.parametrize("how", ["other", "mean"])
def test_passes_that_start_at_the_first_ablated_layer_equal_whole_runs(random_model, random_task,
                                                                       how):
    """Sets whose earliest layer differs, grouped into passes that start there (and, with
    ``other``, at the first differing position), in an order the grouping changes: each equals
    its own whole run with one hook per component; the empty set the unablated run."""
    sets = [[Component("neurons", 2, 7), Component("heads", 2, 1)], [Component("heads", 0, 2)],
            [], [Component("neurons", 1, 3), Component("heads", 2, 3)],
            [Component("heads", 2, 0)], SETS]
    ablator = Ablator(random_model, random_task, how=how, max_batch_rows=2 * random_task.n)
    assert ablator.runner.fast is not None and ablator.runner.start > 0  # the shared-run path
    got = ablator.metrics(sets)
    for components, row in zip(sets, got):
        expected = chained_single_hooks_metric(ablator, components)
        torch.testing.assert_close(row, expected.float(), atol=1e-4, rtol=0)
    assert (got[0] - got[2]).abs().max() > 1e-4 and (got[4] - got[2]).abs().max() > 1e-4


def test_passes_hold_no_more_sets_than_the_memory_budget_allows(random_model, random_task,
                                                                monkeypatch):
    from attrscope.analysis import ablation

    roomy = Ablator(random_model, random_task, how="other")
    assert roomy._sets_per_pass() > 1
    monkeypatch.setattr(ablation, "default_memory_budget", lambda device: 1)
    tight = Ablator(random_model, random_task, how="other")
    assert tight._sets_per_pass() == 1  # one copy of the batch per pass, however small the budget
    sets = [SETS[:2], SETS[2:], SETS]
    torch.testing.assert_close(tight.metrics(sets), roomy.metrics(sets), atol=1e-4, rtol=0)
