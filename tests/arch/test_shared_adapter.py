"""The block adapter (and a half-precision model's float32 working copy of the weights) is made
once per model and dtype and shared by every forward: Runners, EdgeRuns and methods; its
per-layer matrices are cast as they are read, and a backward keeps recipes, not copies."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import attrscope
from attrscope import arch
from attrscope.arch import core
from attrscope.arch.core import BlockAdapter, CastOnRead
from attrscope.arch.forward import full_forward
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

    def counting(self, dtype, **options):
        count[0] += 1
        return original(self, dtype, **options)

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
    W_U = before.W_U.clone()  # cast once (the matrices are cast as read: they follow anyway)
    with torch.no_grad():
        arch.hf_model(model).lm_head.weight.mul_(2)
    after = arch.adapter_for(model)
    assert after is not before
    torch.testing.assert_close(after.W_U, 2 * W_U)
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


def live_casts() -> int:
    return sum(ref() is not None for ref, _ in list(core._RECAST.made.values()))


def test_matrices_are_cast_as_read_and_a_backward_keeps_no_float32_copy(folder):
    """Gradients through the cast-on-read adapter equal those through a whole float32 copy
    (the same float32 values, bit for bit), and while the graph waits for its backward no cast
    matrix is alive: autograd holds the recipe (the model's bfloat16 tensor) instead."""
    model = attrscope.load_model(str(folder), dtype="bfloat16")
    lazy = arch.adapter_for(model)
    assert isinstance(lazy.W_in, CastOnRead) and lazy.W_in[0].dtype == torch.float32
    whole = arch._read_adapter(model).cast(torch.float32)
    assert not isinstance(whole.W_in, CastOnRead)
    tokens = attrscope.load_task("ioi", model, n=2, seed=0).clean_tokens
    grads = []
    for adapter in (lazy, whole):
        embed = arch.embedding(model, tokens, adapter).requires_grad_(True)
        with torch.enable_grad():
            final = full_forward(adapter, embed)
            gc.collect()
            if adapter is lazy:
                assert live_casts() == 0
            (grad,) = torch.autograd.grad(final.pow(2).sum(), embed)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # Without the saved-tensor hooks the graph would hold every layer's casts: the check can fail.
    with torch.enable_grad():
        x = torch.randn(1, 3, lazy.d_model, requires_grad=True)
        kept = [lazy.mlp_raw(layer, lazy.mlp_hidden(layer, x)) for layer in range(lazy.n_layers)]
        gc.collect()
        assert live_casts() >= lazy.n_layers
    del kept
