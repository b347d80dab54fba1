"""``ap`` against transformer_lens.patching (heads) and a one-neuron-per-forward loop (neurons)."""

import pytest
import torch
from transformer_lens import patching

import attrscope
from attrscope import HEADS, NEURONS
from oracles import patch_one_unit_per_forward, run_and_source

TOL = 1e-4


def transformer_lens_heads(model, task, direction):
    """Per-sample head scores from transformer_lens.patching, one sample at a time
    (its metric must be a scalar)."""
    run, source = run_and_source(task, direction)
    out = torch.empty(task.n, model.cfg.n_layers, model.cfg.n_heads)
    with torch.no_grad():
        for i in range(task.n):
            rows = torch.tensor([i])
            _, source_cache = model.run_with_cache(source[i:i + 1])
            metric = lambda logits, rows=rows: task.metric(logits, rows)[0]
            base = metric(model(run[i:i + 1]))
            patched = patching.get_act_patch_attn_head_out_all_pos(
                model, run[i:i + 1], source_cache, metric
            )
            out[i] = patched - base
    return out


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_heads_match_transformer_lens_patching_on_embedded_model(embedded_model, embedded_task, direction):
    scores = attrscope.attribute(embedded_model, embedded_task, "ap", direction, "heads",
                                 show_progress=False)
    reference = transformer_lens_heads(embedded_model, embedded_task, direction)
    assert scores["heads"].shape == reference.shape
    torch.testing.assert_close(scores["heads"], reference, atol=TOL, rtol=0)
    assert reference.abs().max() > 0.1  # the comparison is not between two zero tensors


def test_heads_match_transformer_lens_patching_on_random_model(random_model, random_task):
    scores = attrscope.attribute(random_model, random_task, "ap", "noising", "heads",
                                 show_progress=False, max_batch_rows=7)  # uneven chunks
    reference = transformer_lens_heads(random_model, random_task, "noising")
    torch.testing.assert_close(scores["heads"], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_neurons_match_one_neuron_per_forward_loop(random_model, random_task, direction):
    scores = attrscope.attribute(random_model, random_task, "ap", direction, "neurons",
                                 show_progress=False)
    cfg = random_model.cfg
    for layer in range(cfg.n_layers):
        reference = patch_one_unit_per_forward(random_model, random_task, direction, NEURONS,
                                               layer, range(cfg.d_mlp))
        torch.testing.assert_close(scores["neurons"][:, layer], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_neurons_match_loop_on_embedded_model(embedded_model, embedded_task, direction):
    scores = attrscope.attribute(embedded_model, embedded_task, "ap", direction, "neurons",
                                 show_progress=False)
    d_mlp = embedded_model.cfg.d_mlp
    units = list(range(0, d_mlp, 9)) + [d_mlp - 1]
    for layer in range(embedded_model.cfg.n_layers):
        reference = patch_one_unit_per_forward(embedded_model, embedded_task, direction, NEURONS,
                                               layer, units)
        torch.testing.assert_close(scores["neurons"][:, layer, units], reference, atol=TOL, rtol=0)


def test_different_components_get_different_scores(embedded_model, embedded_task):
    """Catches a stale loop variable patching the same component for every index."""
    scores = attrscope.attribute(embedded_model, embedded_task, "ap", "denoising",
                                 show_progress=False)
    for kind in ("heads", "neurons"):
        per_component = scores[kind].flatten(1).T  # [components, n]
        distinct = torch.unique(per_component.round(decimals=5), dim=0).shape[0]
        assert distinct > 0.9 * per_component.shape[0], kind


def test_heads_in_one_layer_match_single_head_oracle(random_model, random_task):
    layer = random_model.cfg.n_layers - 1
    scores = attrscope.attribute(random_model, random_task, "ap", "denoising", "heads",
                                 show_progress=False)
    reference = patch_one_unit_per_forward(random_model, random_task, "denoising", HEADS, layer,
                                           range(random_model.cfg.n_heads))
    torch.testing.assert_close(scores["heads"][:, layer], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", ["ap", "ig"])
def test_fast_path_is_used_and_equals_hooked_bridge_path(random_model, random_task, method):
    from attrscope.engine import Runner

    fast_runner = Runner(random_model, random_task, "noising", [HEADS, NEURONS])
    assert fast_runner.fast is not None  # GPT-2 blocks take the suffix-only path
    assert 0 < fast_runner.start < random_task.clean_tokens.shape[1]
    slow_runner = Runner(random_model, random_task, "noising", [HEADS, NEURONS], allow_fast=False)
    assert slow_runner.fast is None
    settings = {"n_steps": 5} if method == "ig" else {}
    fast = attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                               runner=fast_runner, **settings)
    slow = attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                               runner=slow_runner, **settings)
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(fast[kind], slow[kind], atol=TOL, rtol=0)


@pytest.mark.parametrize("allow_fast", [True, False], ids=["fast", "hooks"])
def test_sample_groups_of_different_lengths_match_the_oracle(random_model, allow_fast,
                                                             monkeypatch):
    """Enough prompts that they are processed in several groups with their own spans (a group
    costs no overhead here, or this tiny model's would make one group)."""
    from attrscope import engine
    from attrscope.engine import Runner

    monkeypatch.setattr(engine, "PASS_OVERHEAD_FLOPS", 0.0)

    task = attrscope.load_task("ioi", random_model, n=24, seed=11)
    runner = Runner(random_model, task, "denoising", [HEADS, NEURONS], allow_fast=allow_fast)
    groups = runner.sample_groups()
    assert len(groups) > 1 and len({runner.span(g) for g in groups}) > 1
    scores = attrscope.attribute(random_model, task, "ap", "denoising", show_progress=False,
                                 runner=runner, max_batch_rows=50)
    for layer in range(random_model.cfg.n_layers):
        for kind in (HEADS, NEURONS):
            units = range(kind.n_units(random_model.cfg))
            reference = patch_one_unit_per_forward(random_model, task, "denoising", kind, layer, units)
            torch.testing.assert_close(scores[kind.name][:, layer], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_unit_subset_matches_the_oracle_on_random_model(random_model, random_task, direction):
    """Only the chosen units are patched (the same in every layer); the rest stay NaN."""
    chosen = {"neurons": [95, 0, 40, 17, 40], "heads": [3, 1]}
    scores = attrscope.attribute(random_model, random_task, "ap", direction, units=chosen,
                                 show_progress=False, max_batch_rows=7)
    assert scores.meta["settings"]["units"] == {"neurons": [0, 17, 40, 95], "heads": [1, 3]}
    for kind, units in (("neurons", [0, 17, 40, 95]), ("heads", [1, 3])):
        values = scores[kind]
        others = [u for u in range(values.shape[2]) if u not in units]
        assert torch.isnan(values[:, :, others]).all()
        assert not torch.isnan(values[:, :, units]).any()
        kind_spec = NEURONS if kind == "neurons" else HEADS
        for layer in range(random_model.cfg.n_layers):
            reference = patch_one_unit_per_forward(random_model, random_task, direction, kind_spec,
                                                   layer, units)
            torch.testing.assert_close(values[:, layer, units], reference, atol=TOL, rtol=0)
    assert all(not torch.isnan(torch.tensor(v)) for _, v in scores.top("neurons", 100))
    assert len(scores.top("neurons", 100)) == 4 * random_model.cfg.n_layers


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_unit_subset_matches_the_oracle_on_embedded_model(embedded_model, embedded_task, direction):
    units = [511, 3, 200, 64]
    scores = attrscope.attribute(embedded_model, embedded_task, "ap", direction, "neurons",
                                 units={"neurons": torch.tensor(units)},
                                 show_progress=False)
    for layer in range(embedded_model.cfg.n_layers):
        reference = patch_one_unit_per_forward(embedded_model, embedded_task, direction, NEURONS,
                                               layer, sorted(units))
        torch.testing.assert_close(scores["neurons"][:, layer, sorted(units)], reference,
                                   atol=TOL, rtol=0)


@pytest.mark.parametrize("units, message", [
    ({"neurons": [96]}, r"neuron index 96 is out of range; this model has 96 neurons per layer"),
    ({"neurons": [-1]}, r"neuron index -1 is out of range"),
    ({"heads": [4]}, r"head index 4 is out of range; this model has 4 heads"),
    ({"neurons": [1.5]}, r"1.5 is not an integer neuron index"),
    ({"neurons": []}, r"units\['neurons'\] is empty"),
    ({"edges": [1]}, r"not being scored"),
    ([1, 2], r"units must be a mapping"),
])
def test_bad_unit_subsets_are_refused(random_model, random_task, units, message):
    with pytest.raises(ValueError, match=message):
        attrscope.attribute(random_model, random_task, "ap", "noising", units=units,
                            show_progress=False)


def test_units_of_a_kind_not_scored_are_refused(random_model, random_task):
    with pytest.raises(ValueError, match=r"\['neurons'\] that are not being scored"):
        attrscope.attribute(random_model, random_task, "ap", "noising", "heads",
                            units={"neurons": [0]}, show_progress=False)
