"""Masked editing: the parameters a target owns, bit-identical elsewhere after an edit (heads,
neurons, grouped-query attention, n_layers != n_heads), target selection, the written folder."""

import json

import pytest
import torch

import attrscope
from attrscope.analysis.edit import (ALL, Target, build_target, clean_copy, masked_finetune,
                                     needed_results, parameter_masks, parse_target, random_like,
                                     top_fraction, union)
from attrscope.analysis.edit_eval import EditSetup, edit, edit_each
from attrscope.analysis.ground_truth import load_ground_truth
from attrscope.scores import Scores
from attrscope.tasks.facts import capital_facts
from families import build


@pytest.fixture(scope="module")
def task_model():
    return attrscope.load_model("attrscope-tasks")


@pytest.fixture(scope="module")
def gqa_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_gqa")
    build("llama", folder)  # 3 layers, 4 query heads, 2 key/value heads
    return attrscope.load_model(str(folder))


def _examples(hf, tokenizer):
    ids = torch.tensor([tokenizer("When Mary and John went to the store, John gave a drink to",
                                  add_special_tokens=False)["input_ids"]])
    return [(ids, tokenizer(" Mary", add_special_tokens=False)["input_ids"][0])]


def _edit_and_check(model, target: Target, weight_decay: float = 0.0):
    """Edit with ``target`` and return (masks, changed): asserts that every element outside the
    masks is bit-identical and that the masked ones moved."""
    hf = clean_copy(model)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    masks = parameter_masks(hf, target)
    losses = masked_finetune(hf, masks, _examples(hf, model.tokenizer), steps=3, lr=1e-2,
                             weight_decay=weight_decay)
    assert losses[-1] < losses[0]
    for name, p in hf.named_parameters():
        keep = torch.ones(p.numel(), dtype=torch.bool)
        if name in masks:
            keep[masks[name]] = False
            assert not torch.equal(p.detach().reshape(-1)[~keep], before[name].reshape(-1)[~keep])
        assert torch.equal(p.detach().reshape(-1)[keep], before[name].reshape(-1)[keep]), name
    return masks


def test_head_and_neuron_edits_leave_everything_else_bit_identical(task_model):
    cfg = task_model.cfg
    assert cfg.n_layers != cfg.n_heads  # 4 layers, 8 heads: a transposed mask would show
    masks = _edit_and_check(task_model, Target("x", heads=((3, 6), (1, 2)), neurons=((2, 300),)),
                            weight_decay=0.1)  # decay on target elements only
    assert set(masks) == {f"transformer.h.{layer}.{name}" for layer in (1, 3) for name in (
        "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight")} | {
        "transformer.h.2.mlp.c_fc.weight", "transformer.h.2.mlp.c_fc.bias",
        "transformer.h.2.mlp.c_proj.weight"}


def _columns(W: torch.Tensor, cols) -> torch.Tensor:
    """Flat indices of columns ``cols`` of a 2-D tensor."""
    idx = torch.arange(W.numel()).view(W.shape)
    return idx[:, cols].reshape(-1)


def _rows(W: torch.Tensor, rows) -> torch.Tensor:
    idx = torch.arange(W.numel()).view(W.shape)
    return idx[rows].reshape(-1)


def test_gpt2_masks_are_the_hand_slices(task_model):
    """Head (3, 6) and neuron (2, 300) of GPT-2 by hand: c_attn ([d, 3d], Conv1D) columns of
    the head in q, k and v, c_proj rows; c_fc column and c_proj row of the neuron."""
    hf = clean_copy(task_model)
    d, E = hf.config.n_embd, hf.config.n_embd // hf.config.n_head
    h = 6
    cols = [part * d + h * E + e for part in range(3) for e in range(E)]
    masks = parameter_masks(hf, Target("x", heads=((3, h),), neurons=((2, 300),)))
    blocks = hf.transformer.h
    expect = {
        "transformer.h.3.attn.c_attn.weight": _columns(blocks[3].attn.c_attn.weight, cols),
        "transformer.h.3.attn.c_attn.bias": torch.tensor(cols),
        "transformer.h.3.attn.c_proj.weight": _rows(blocks[3].attn.c_proj.weight,
                                                    list(range(h * E, (h + 1) * E))),
        "transformer.h.2.mlp.c_fc.weight": _columns(blocks[2].mlp.c_fc.weight, [300]),
        "transformer.h.2.mlp.c_fc.bias": torch.tensor([300]),
        "transformer.h.2.mlp.c_proj.weight": _rows(blocks[2].mlp.c_proj.weight, [300]),
    }
    assert set(masks) == set(expect)
    for name, idx in expect.items():
        assert torch.equal(masks[name], idx.sort().values), name


def test_grouped_query_masks_are_the_hand_slices_and_edit_exactly(gqa_model):
    """Llama, 4 query heads over 2 key/value heads: query head 3 reads key/value head 1 (Hugging
    Face's repeat_kv order); its q_proj rows, k/v_proj rows of kv head 1, o_proj columns. Neuron
    5: gate and up rows, down column."""
    hf = clean_copy(gqa_model)
    cfg = hf.config
    E = cfg.hidden_size // cfg.num_attention_heads
    assert cfg.num_hidden_layers != cfg.num_attention_heads
    masks = parameter_masks(hf, Target("x", heads=((0, 3),), neurons=((2, 5),)))
    attn, mlp = hf.model.layers[0].self_attn, hf.model.layers[2].mlp
    expect = {
        "model.layers.0.self_attn.q_proj.weight": _rows(attn.q_proj.weight, slice(3 * E, 4 * E)),
        "model.layers.0.self_attn.k_proj.weight": _rows(attn.k_proj.weight, slice(E, 2 * E)),
        "model.layers.0.self_attn.v_proj.weight": _rows(attn.v_proj.weight, slice(E, 2 * E)),
        "model.layers.0.self_attn.o_proj.weight": _columns(attn.o_proj.weight,
                                                           list(range(3 * E, 4 * E))),
        "model.layers.2.mlp.gate_proj.weight": _rows(mlp.gate_proj.weight, [5]),
        "model.layers.2.mlp.up_proj.weight": _rows(mlp.up_proj.weight, [5]),
        "model.layers.2.mlp.down_proj.weight": _columns(mlp.down_proj.weight, [5]),
    }
    assert set(masks) == set(expect)
    for name, idx in expect.items():
        assert torch.equal(masks[name], idx.sort().values), name
    _edit_and_check(gqa_model, Target("x", heads=((0, 3), (2, 0)), neurons=((1, 7),)))


def test_all_changes_every_parameter_and_nothing_is_left_out(task_model):
    hf = clean_copy(task_model)
    masks = parameter_masks(hf, ALL)
    assert sum(m.numel() for m in masks.values()) == sum(p.numel() for p in hf.parameters())


def test_the_users_model_is_not_changed(task_model):
    before = {n: p.detach().clone() for n, p in task_model.original_model.named_parameters()}
    result = edit(task_model, capital_facts(1, seed=4), Target("x", heads=((3, 1),)), steps=3,
                  n_boot=10)
    assert result.record["n_parameters_changed"] > 0
    for name, p in task_model.original_model.named_parameters():
        assert torch.equal(p, before[name]), name


def test_edited_folder_loads_and_records_what_changed(task_model, tmp_path):
    facts = capital_facts(2, seed=1)
    target = Target("mine", heads=((2, 5),), neurons=((0, 9), (3, 100)))
    result = edit(task_model, facts, target, steps=40, lr=3e-3, out=tmp_path / "edited",
                  n_boot=10)
    record = json.loads((tmp_path / "edited" / "edit.json").read_text())
    assert record["heads"] == ["2.5"] and record["neurons"] == ["0.9", "3.100"]
    per_parameter = record["parameters"].values()
    assert record["n_parameters_changed"] == sum(v["changed"] for v in per_parameter)
    assert [f["case_id"] for f in record["facts"]] == [f.case_id for f in facts]
    reloaded = clean_copy(attrscope.load_model(str(tmp_path / "edited")))
    original = clean_copy(task_model)
    saved = dict(reloaded.named_parameters())
    changed = 0
    for name, p in result.model.named_parameters():
        assert torch.equal(saved[name], p), name
        changed += int((p != dict(original.named_parameters())[name]).sum())
    assert 0 < changed <= record["n_parameters_changed"]
    assert result.after[0].keys() >= {"efficacy", "generalisation", "specificity", "fluency"}


def test_each_fact_is_edited_from_the_unedited_model(task_model):
    setup = EditSetup.prepare(task_model, capital_facts(3, seed=2))
    original = {n: p.detach().clone() for n, p in setup.hf.named_parameters()}
    rows, changed = edit_each(setup, Target("x", heads=((3, 1),)), steps=5, lr=1e-2)
    assert len(rows) == 3 and changed > 0
    for name, p in setup.hf.named_parameters():
        assert torch.equal(p, original[name]), name


# -- target selection --------------------------------------------------------------------------
def _scores(heads: torch.Tensor, neurons: torch.Tensor) -> Scores:
    return Scores({"heads": heads, "neurons": neurons},
                  meta={"method": "m", "direction": "denoising"})


def test_top_fraction_takes_the_largest_absolute_means_per_kind():
    heads = torch.zeros(2, 2, 3)
    heads[:, 1, 2] = -5.0  # largest |mean|
    heads[0, 0, 1], heads[1, 0, 1] = 4.0, 2.0  # mean 3
    neurons = torch.arange(8.0).view(1, 2, 4).repeat(2, 1, 1)
    target = top_fraction(_scores(heads, neurons), 0.3)  # ceil(0.3 * 6) = 2, ceil(0.3 * 8) = 3
    assert target.heads == ((0, 1), (1, 2))
    assert target.neurons == ((1, 1), (1, 2), (1, 3))


def test_random_like_keeps_the_sizes_and_follows_the_seed():
    target = Target("t", heads=((0, 1), (1, 2)), neurons=((0, 0), (1, 3), (2, 2)))
    a, b, c = (random_like(target, 3, 4, 5, seed=s) for s in (0, 0, 1))
    assert a == b and a != c
    assert a.counts() == target.counts()
    assert all(0 <= layer < 3 and 0 <= h < 4 for layer, h in a.heads)
    assert all(0 <= layer < 3 and 0 <= n < 5 for layer, n in a.neurons)


def test_union_and_parse_target():
    a, b = Target("a", heads=((0, 1),)), Target("b", heads=((0, 1),), neurons=((1, 1),))
    assert union(a, b).heads == ((0, 1),) and union(a, b).neurons == ((1, 1),)
    assert union(a, ALL).everything
    assert parse_target("ig:top10%+latent") == [("top", "ig", "denoising", 0.1, True), ("latent",)]
    assert parse_target("ap/noising:top5") == [("top", "ap", "noising", 5, False)]
    assert parse_target("random:ig:top10%")[0][0] == "random"
    assert parse_target("random@3:ig:top10%")[0][2] == 3
    for bad in ("ig:top0%", "ig:top", "ig:top2.5", "random:all", "heads"):
        with pytest.raises(ValueError, match="--target"):
            parse_target(bad)


def test_a_count_target_takes_that_many_of_each_kind():
    heads = torch.arange(12.0).view(1, 3, 4)
    neurons = -torch.arange(30.0).view(1, 3, 10)
    results = {("m", "denoising"): _scores(heads, neurons)}
    target = build_target(parse_target("m:top2"), results, {})
    assert target.heads == ((2, 2), (2, 3)) and target.neurons == ((2, 8), (2, 9))


def test_the_latent_target_is_the_planted_and_or_heads():
    """On the planted-circuit model the latent set (ap against ig) is exactly its AND pair and
    OR pair, and 'random:latent' draws as many heads."""
    model = attrscope.load_model("attrscope-planted")
    task = attrscope.load_task("planted", model, n=20)
    parts = parse_target("latent")
    results = {key: attrscope.attribute(model, task, *key, show_progress=False)
               for key in needed_results(parts)}
    truth = load_ground_truth()["heads"]
    target = build_target(parts, results, {})
    assert set(target.labels("heads")) == set(truth["and"] + truth["or"])
    assert target.neurons == ()
    sizes = {"n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
             "d_mlp": model.cfg.d_mlp}
    drawn = build_target(parse_target("random:latent"), results, sizes, seed=1)
    assert drawn.counts() == target.counts()


def test_per_fact_targets_rank_each_facts_own_scores():
    """sample=i ranks the top components by sample i alone: two samples with different largest
    components give different targets, and the mean ranks by both."""
    heads = torch.zeros(2, 2, 2)
    heads[0, 0, 0], heads[1, 1, 1] = 5.0, 4.0  # sample 0: head 0.0, sample 1: head 1.1
    neurons = torch.zeros(2, 2, 2)
    neurons[0, 1, 0], neurons[1, 0, 1] = -3.0, 2.0
    results = {("m", "denoising"): _scores(heads, neurons)}
    parts = parse_target("m:top1")
    assert build_target(parts, results, {}, sample=0).heads == ((0, 0),)
    assert build_target(parts, results, {}, sample=1).heads == ((1, 1),)
    assert build_target(parts, results, {}, sample=1).neurons == ((0, 1),)
    assert build_target(parts, results, {}).heads == ((0, 0),)  # mean 2.5 > 2.0


def test_compare_edits_per_fact_uses_a_target_per_fact(task_model):
    from attrscope.analysis.edit_eval import compare_edits

    c = compare_edits(task_model, capital_facts(3, seed=6), ("atp:top3",), steps=2,
                      per_fact=True, n_boot=10)
    row = c["rows"][1]
    assert row["target"] == "atp:top3 (per fact)" and row["heads"] == 3
    assert all(len(f["target_heads"]) == 3 and f["changed"] > 0 for f in row["facts"])
    assert c["settings"]["per_fact"]


def test_edit_reads_a_counterfact_file(task_model, tmp_path):
    from attrscope.tasks.facts import write_facts

    path = write_facts(capital_facts(2, seed=8), tmp_path / "facts.json")
    result = attrscope.edit(task_model, path, Target("x", neurons=((3, 4),)), steps=2, n_boot=10)
    assert result.record["settings"]["facts"] == str(path)
    assert [f["case_id"] for f in result.record["facts"]] == ["0", "1"]
