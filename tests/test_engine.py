"""Engine: hooks never outlive a run, and the shortcut forward equals the full forward."""

import pytest
import torch

import attrscope
from attrscope import HEADS, NEURONS
from attrscope.engine import Runner


def attached_hooks(model) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def test_hooks_are_removed_after_an_exception_inside_a_run(random_model, random_task):
    runner = Runner(random_model, random_task, "denoising", [HEADS])
    before = attached_hooks(random_model)

    def boom(act, hook):
        raise RuntimeError("boom inside a hook")

    with pytest.raises(RuntimeError, match="boom inside a hook"):
        runner.metric_from_layer(1, 2, [(HEADS.hook_name(1), boom)])
    assert attached_hooks(random_model) == before == 0
    # and the model still gives unpatched results
    with torch.no_grad():
        again = random_task.metric(random_model(runner.run_tokens))
    torch.testing.assert_close(again, runner.metric_run, atol=1e-5, rtol=0)


def test_method_failure_inside_a_hooked_forward_leaves_no_hooks(random_model, random_task, monkeypatch):
    from attrscope import engine

    runner = Runner(random_model, random_task, "noising", [HEADS], allow_fast=False)
    # a patch of the wrong shape makes the model fail inside the hooked forward pass
    monkeypatch.setattr(engine, "patched_copies", lambda run, source, units: torch.zeros(1, 1, 1, 1))
    with pytest.raises(Exception):
        attrscope.attribute(random_model, random_task, "ap", "noising", "heads",
                            show_progress=False, runner=runner)
    assert attached_hooks(random_model) == 0


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_restarting_at_a_layer_equals_the_full_forward(random_model, random_task, direction):
    runner = Runner(random_model, random_task, direction, [HEADS, NEURONS])
    run = runner.run_tokens
    with torch.no_grad():
        full = random_task.metric(random_model(run))
        for layer in range(random_model.cfg.n_layers):
            torch.testing.assert_close(runner.metric_from_layer(layer, 3, []), full.repeat(3),
                                       atol=1e-5, rtol=0)
    source = runner.source_tokens
    with torch.no_grad():
        torch.testing.assert_close(runner.metric_source, random_task.metric(random_model(source)),
                                   atol=1e-5, rtol=0)


def test_unknown_settings_methods_and_directions_are_refused(random_model, random_task):
    with pytest.raises(ValueError, match=r"no setting\(s\) \['n_step'\]"):
        attrscope.attribute(random_model, random_task, "ig", "noising", n_step=3)
    with pytest.raises(ValueError, match="Unknown method 'eap'"):
        attrscope.attribute(random_model, random_task, "eap", "noising")
    with pytest.raises(ValueError, match="denoising"):
        attrscope.attribute(random_model, random_task, "ap", "clean_to_corrupt")
    with pytest.raises(ValueError, match="Unknown component kind"):
        attrscope.attribute(random_model, random_task, "ap", "noising", "edges")


def test_result_records_what_produced_it(random_model, random_task):
    scores = attrscope.attribute(random_model, random_task, "ig", "noising", "heads", n_steps=3,
                                 show_progress=False)
    meta = scores.meta
    assert meta["method"] == "ig" and meta["direction"] == "noising"
    assert meta["settings"]["n_steps"] == 3 and meta["settings"]["baseline"] == "matched"
    assert meta["task"]["name"] == "ioi" and meta["task"]["n"] == random_task.n
    assert meta["model_config"]["n_layers"] == 3 and "clean" in meta["sign_convention"]
    assert meta["versions"]["attrscope"] == attrscope.__version__
    assert scores["heads"].shape == (random_task.n, 3, 4)
