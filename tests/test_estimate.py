"""The calibrated time estimate: pass weights from the model's shape, no timing in the asserts."""

import pytest
import torch

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


def test_a_half_precision_model_is_timed_as_the_methods_run_it(random_model_dir, random_model,
                                                              random_task):
    """bfloat16 weights, float32 compute: the timed forward is the adapter's float32 blocks
    (what every method runs), scaled by the unembedding's share; a float32 model's own."""
    from attrscope.estimate import methods_forward

    run, scale = methods_forward(random_model, random_task.clean_tokens)
    assert run is random_model and scale == 1.0
    half = attrscope.load_model(str(random_model_dir), dtype="bfloat16")
    run, scale = methods_forward(half, random_task.clean_tokens)
    out = run(random_task.clean_tokens)
    assert out.dtype == torch.float32 and out.shape[:2] == random_task.clean_tokens.shape
    shape = ForwardShape.of(half, random_task)
    blocks = shape.n_layers * shape.block_flops
    assert scale == pytest.approx((blocks + shape.unembed_flops) / blocks)


def test_ablation_estimate_counts_the_positions_a_pass_computes(random_model, random_task):
    from attrscope.engine import first_difference
    from attrscope.estimate import ABLATION_OVERHEAD, ablation_seconds

    shape = ForwardShape.of(random_model, random_task)
    start = first_difference(random_task)
    assert start > 0

    def expected(positions):
        work = positions * shape.n_layers * shape.block_flops + shape.unembed_flops
        full = shape.positions * (shape.n_layers * shape.block_flops + shape.unembed_flops)
        return ABLATION_OVERHEAD * 10 * random_task.n * 0.5 * work / full

    other = ablation_seconds(random_model, random_task, 10, "other", 0.5)
    assert other == pytest.approx(expected(shape.positions - start))
    assert ablation_seconds(random_model, random_task, 10, "mean", 0.5) == pytest.approx(
        expected(shape.positions)) and other < expected(shape.positions)
