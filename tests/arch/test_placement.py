"""Placement: each layer's part of a forward runs on the device of that layer's weights, and the
run caches can live on another device (``cache_device``) with identical results.

Without a GPU, the plan mixes ``cpu`` with ``meta`` (tensors with shapes but no data): an
operation mixing the two devices raises, so a layer that ran anywhere but on its planned device
fails these tests.
"""

from __future__ import annotations

import pytest
import torch

import attrscope
from attrscope import arch
from attrscope.components import resolve_kinds
from attrscope.engine import Runner


def test_each_layer_runs_on_its_planned_device(random_model, random_task):
    adapter = arch.adapter_for(random_model)
    plan = ["cpu", "meta", "meta"]
    placed = adapter.place(plan)
    for layer, device in enumerate(plan):
        assert placed.W_Q[layer].device.type == device and placed.ln_attn[layer].weight.device.type == device
        assert placed.device_of(layer).type == device
    assert adapter.W_Q[1].device.type == "cpu"  # the original is untouched
    embed = arch.embedding(random_model, random_task.clean_tokens, adapter)
    caches: list[dict] = []
    final = arch.full_forward(placed, embed, caches)
    for layer, device in enumerate(plan):
        for key in ("z", "hidden", "k", "attn_raw"):
            assert caches[layer][key].device.type == device, (layer, key)
    assert final.device.type == "meta"
    with pytest.raises((RuntimeError, NotImplementedError)):  # the check can fail: unplaced weights
        bad = adapter.place(plan)
        bad.W_Q[1] = adapter.W_Q[1]
        arch.full_forward(bad, embed)


def test_a_wrong_plan_is_refused(random_model):
    with pytest.raises(ValueError, match="one device per layer"):
        arch.adapter_for(random_model).place(["cpu"])


def test_suffix_caches_are_streamed_to_the_layer_device(random_model, random_task):
    runner = Runner(random_model, random_task, "denoising", resolve_kinds("heads"), cache_device="cpu")
    fast = runner.fast
    assert fast is not None and fast.caches[1]["pre"].device.type == "cpu"
    fast.adapter = fast.adapter.place(["cpu", "meta", "cpu"])
    rows = torch.arange(random_task.n)
    assert fast.cached(1, "pre", rows, 2, 5).device.type == "meta"
    assert fast.cached(1, "k", rows, 0, 2).shape[2] == 2  # keys: positions on axis 2
    assert fast.cached(0, "pre", rows).device.type == "cpu"


@pytest.mark.parametrize("method", ["ap", "ig"])
def test_host_caches_give_identical_results(random_model_dir, random_task, method):
    plain = attrscope.load_model(random_model_dir)
    hosted = attrscope.load_model(random_model_dir, cache_device="cpu")
    assert arch.cache_device(hosted) == torch.device("cpu") and arch.cache_device(plain) is None
    settings = {"n_steps": 4} if method == "ig" else {}
    a = attrscope.attribute(plain, random_task, method, "noising", "heads,neurons", show_progress=False, **settings)
    b = attrscope.attribute(hosted, random_task, method, "noising", "heads,neurons", show_progress=False, **settings)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(a.values[kind], b.values[kind], rtol=0, atol=0)
