"""The calibrated time estimate: pass weights from the model's shape, no timing in the asserts."""

import pytest

import attrscope
from attrscope.estimate import (SUFFIX_OVERHEAD, ForwardShape, estimate_seconds, node_passes,
                                timed_forward)


def test_pass_weights_follow_the_shape(random_model, random_task):
    shape = ForwardShape.of(random_model, random_task)
    assert 0 < shape.span <= shape.positions
    full = shape.positions * (shape.n_layers * shape.block_flops + shape.unembed_flops)
    suffix = (shape.span * shape.n_layers / 2 * shape.block_flops + shape.unembed_flops) / full
    assert shape.fraction("patch_each_unit") == pytest.approx(SUFFIX_OVERHEAD * suffix)
    assert shape.fraction("integrate_inputs") == 1.0  # full passes
    assert 0 < shape.fraction("backward_per_dropped_layer") < shape.fraction("run_source_and_backward") < 1


def test_estimate_is_counted_passes_times_their_weight(random_model, random_task):
    shape = ForwardShape.of(random_model, random_task)
    kinds = ["heads", "neurons"]
    count = node_passes("ap", {}, random_model.cfg, random_task.n, kinds)
    seconds = estimate_seconds(random_model, random_task, "ap", {}, kinds, per_pass=0.5)
    assert seconds == pytest.approx(count * 0.5 * shape.fraction("patch_each_unit"))
    # screened: the screen's passes plus top-K + audit units, fewer than every unit here
    screened = estimate_seconds(random_model, random_task, "ap",
                                {"screen": "atp", "screen_top_k": 5, "screen_audit": 5}, kinds,
                                per_pass=0.5)
    assert 0 < screened < seconds
    edges = estimate_seconds(random_model, random_task, "eap", {}, [], per_pass=0.5)
    assert edges > 0


def test_timed_forward_measures_a_positive_time(random_model, random_task):
    assert timed_forward(random_model, random_task.clean_tokens) > 0
