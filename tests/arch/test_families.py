"""Conformance of every supported model family (tests/families.py) against plain Hugging Face hooks.

The oracles (tests/hf_oracle.py) use only the Hugging Face model: forward pre-hooks on each block's attention
output projection (its input is the heads' ``z``, head h at features ``h*E .. (h+1)*E``) and on
the MLP's output projection (its input is the neurons' activations), one patch per forward, full
logits, the metric read by hand. No TransformerLens and no attrscope code runs inside them.

Tolerance: 1e-4 + 1e-3 x max |oracle| (float32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attrscope
from attrscope.arch import adapter_for, embedding, full_forward, hf_model
from attrscope.edges.graph import Graph
from attrscope.api import attribute_edges
from attrscope.edges.methods import EdgeRun, eap_scores, exact_scores
from families import FAMILIES, REFUSED, build
from hf_oracle import module, oracle_gradient_times_difference, oracle_patch, per_head

DIRECTIONS = ["denoising", "noising"]
NEURONS = [0, 37, 101, 199]
POST_NORM = {"gemma2", "gemma3_text", "olmo2"}


def assert_matches(got: torch.Tensor, oracle: torch.Tensor) -> None:
    tol = 1e-4 + 1e-3 * float(oracle.abs().max())
    worst = float((got - oracle).abs().max())
    assert worst <= tol, f"max difference {worst:.3g} > tolerance {tol:.3g}"


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory):
    """(family, bridge, HF model, task) for a tiny random model of each family."""
    folder = tmp_path_factory.mktemp(request.param)
    build(request.param, folder)
    model = attrscope.load_model(str(folder))
    task = attrscope.load_task("ioi", model, n=4, seed=3)
    return request.param, model, hf_model(model), task


# -- the forward --------------------------------------------------------------------------------
def test_adapter_reproduces_hf_logits(fam):
    family, model, hf, task = fam
    adapter = adapter_for(model)
    tokens = torch.cat([task.clean_tokens, task.corrupted_tokens])
    with torch.no_grad():
        ours = adapter.logits(full_forward(adapter, embedding(model, tokens, adapter)))
        assert_matches(ours, hf(tokens).logits)


@pytest.mark.parametrize("family", REFUSED)
def test_unsupported_features_refused_by_name(family, tmp_path):
    """No forward of attrscope runs it (the TransformerLens fallback crashes on it too): the
    one model check refuses it when loaded, and every method refuses the model object."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    build(family, tmp_path)
    with pytest.raises(ValueError, match="post-LayerNorm"):
        attrscope.load_model(str(tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="post-LayerNorm"):
        adapter_for(hf)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="post-LayerNorm"):
        attrscope.load_model(hf, tokenizer=tokenizer)


# -- node methods --------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ap_matches_hf_oracle(fam, direction):
    family, model, hf, task = fam
    adapter = adapter_for(model)
    H, E = adapter.n_heads, adapter.d_head
    scores = attrscope.attribute(model, task, "ap", direction, units={"neurons": NEURONS},
                                 show_progress=False)
    assert scores.meta["engine"].startswith("suffix_forward")
    for layer in range(adapter.n_layers):
        heads = oracle_patch(hf, task, direction, module(hf, family, 0, layer),
                             [slice(h * E, (h + 1) * E) for h in range(H)])
        assert_matches(scores["heads"][:, layer], heads)
        neurons = oracle_patch(hf, task, direction, module(hf, family, 1, layer), NEURONS)
        assert_matches(scores["neurons"][:, layer, NEURONS], neurons)
    assert scores["heads"].abs().max() > 1e-3


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_atp_and_ig_match_hf_gradients(fam, direction):
    family, model, hf, task = fam
    H = adapter_for(model).n_heads
    atp = attrscope.attribute(model, task, "atp", direction, show_progress=False)
    ig = attrscope.attribute(model, task, "ig", direction, n_steps=3, show_progress=False)
    nodes, weights = np.polynomial.legendre.leggauss(3)
    last = adapter_for(model).n_layers - 1
    for layer in (0, last):  # the first layer's effect passes through every later block
        for which, kind in ((0, "heads"), (1, "neurons")):
            mod = module(hf, family, which, layer)
            grads = oracle_gradient_times_difference(hf, task, direction, mod, [0.0], [1.0])
            integral = oracle_gradient_times_difference(hf, task, direction, mod,
                                                        0.5 * (nodes + 1), 0.5 * weights)
            if kind == "heads":
                grads, integral = per_head(grads, H), per_head(integral, H)
            assert_matches(atp[kind][:, layer], grads)
            assert_matches(ig[kind][:, layer], integral)


def test_atpstar_qk_fix_runs_and_joint_equals_atp(fam):
    """AtP*'s QK fix reads every family's attention (rotary, GQA, soft-capping, windows, q/k
    norms, scales); with GradDrop off its joint head score is exactly atp's."""
    family, model, hf, task = fam
    star = attrscope.attribute(model, task, "atpstar", "denoising", "heads", graddrop=False,
                               show_progress=False)
    atp = attrscope.attribute(model, task, "atp", "denoising", "heads", show_progress=False)
    assert_matches(star["heads"], atp["heads"])
    terms = [star.extras[f"qk.{t}.heads"] for t in ("value", "query", "key")]
    assert all(torch.isfinite(t).all() for t in terms) and terms[1].abs().max() > 0


# -- edges ---------------------------------------------------------------------------------------
def out_edges(graph: Graph, sources: list[int]) -> list[int]:
    return torch.nonzero(torch.isin(graph.source_index, torch.tensor(sources))).flatten().tolist()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_edges_match_node_patching(fam, direction):
    """Exact patching of all out-edges of a layer's heads (of its MLP) equals the HF oracle's
    patch of that layer's whole attention (MLP) output; where a head's output is its own term of
    the stream (no post-norm), also per head against ``ap``, and EAP summed over a node's
    out-edges equals ``atp``."""
    family, model, hf, task = fam
    er = EdgeRun.prepare(model, task, direction)
    graph = er.graph
    assert graph.parallel == (family in ("gpt_neox", "gptj"))
    L, H = graph.n_layers, graph.n_heads
    sets = []
    for layer in range(L):
        sets.append(out_edges(graph, [graph.head_source(layer, h) for h in range(H)]))
        sets.append(out_edges(graph, [graph.mlp_source(layer)]))
    per_head_sets = [out_edges(graph, [graph.head_source(layer, h)])
                     for layer in range(L) for h in range(H)]
    exact = exact_scores(er, sets + per_head_sets, max_batch_rows=64)
    for layer in range(L):
        for which in (0, 1):
            oracle = oracle_patch(hf, task, direction, module(hf, family, which, layer), [slice(None)])
            assert_matches(exact[:, 2 * layer + which], oracle[:, 0])
    if family in POST_NORM:
        return
    ap = attrscope.attribute(model, task, "ap", direction, "heads", show_progress=False)
    atp = attrscope.attribute(model, task, "atp", direction, show_progress=False)
    assert_matches(exact[:, 2 * L:].reshape(-1, L, H), ap["heads"])
    eap = eap_scores(er)
    for layer in range(L):
        for h in range(H):
            assert_matches(eap[:, out_edges(graph, [graph.head_source(layer, h)])].sum(-1),
                           atp["heads"][:, layer, h])
        assert_matches(eap[:, out_edges(graph, [graph.mlp_source(layer)])].sum(-1),
                       atp["neurons"][:, layer].sum(-1))


def test_every_edge_method_runs(fam):
    family, model, hf, task = fam
    for method in ("eap-ig", "eap-ig-act"):  # eap and exact: test_edges_match_node_patching
        settings = {"n_steps": 2} if method.startswith("eap-ig") else {}
        scores = attribute_edges(model, task, method, "noising", show_progress=False, **settings)
        assert torch.isfinite(scores["edges"]).all()
