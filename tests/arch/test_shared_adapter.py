"""The block adapter (and a half-precision model's float32 working copy of the weights) is made
once per model and dtype and shared by every forward: Runners, EdgeRuns and methods."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import attrscope
from attrscope import arch
from attrscope.arch.core import BlockAdapter
from attrscope.components import resolve_kinds
from attrscope.edges.methods import EdgeRun
from attrscope.engine import Runner
from families import build


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared_llama")
    build("llama", folder)
    return folder


@pytest.fixture
def casts(monkeypatch):
    """The number of BlockAdapter.cast calls (each one a full copy of the weights)."""
    count = [0]
    original = BlockAdapter.cast

    def counting(self, dtype):
        count[0] += 1
        return original(self, dtype)

    monkeypatch.setattr(BlockAdapter, "cast", counting)
    return count


def test_one_float32_copy_is_shared_by_runners_edge_runs_and_methods(folder, casts):
    model = attrscope.load_model(str(folder), dtype="bfloat16")
    task = attrscope.load_task("ioi", model, n=3, seed=0)
    heads = resolve_kinds("heads")
    first = Runner(model, task, "denoising", heads)
    second = Runner(model, task, "noising", heads)
    edges = EdgeRun.prepare(model, task, "denoising")
    assert first.fast is not None and second.fast is not None
    assert first.fast.adapter is second.fast.adapter is edges.forward.w
    assert first.fast.adapter.dtype == torch.float32
    for method in ("atp", "ig", "atpstar"):
        attrscope.attribute(model, task, method, "denoising", "heads", show_progress=False,
                            **({"n_steps": 2} if method == "ig" else {}))
    attrscope.attribute(model, task, "eap", "denoising", "edges", show_progress=False)
    assert casts[0] == 1


def test_a_float32_model_is_read_once_and_never_cast(folder, casts):
    model = attrscope.load_model(str(folder))
    assert arch.adapter_for(model) is arch.adapter_for(model)
    assert casts[0] == 0


def test_weights_edited_in_place_or_moved_are_read_again(folder):
    model = attrscope.load_model(str(folder), dtype="bfloat16")
    before = arch.adapter_for(model)
    with torch.no_grad():
        arch.hf_model(model).model.layers[0].self_attn.q_proj.weight.mul_(2)
    after = arch.adapter_for(model)
    assert after is not before
    torch.testing.assert_close(after.W_Q[0], 2 * before.W_Q[0])
    model.to(torch.float32)  # a new dtype of the model's own: another copy, no float32 cast
    assert arch.adapter_for(model).W_Q[0].data_ptr() == \
        arch.hf_model(model).model.layers[0].self_attn.q_proj.weight.data_ptr()


def test_the_copy_goes_with_the_model_or_when_forgotten(folder):
    model = attrscope.load_model(str(folder), dtype="bfloat16")
    copy = weakref.ref(arch.adapter_for(model).W_U)
    arch.forget_adapters(model)
    gc.collect()
    assert copy() is None
    copy = weakref.ref(arch.adapter_for(model).W_U)
    del model
    gc.collect()
    assert copy() is None
