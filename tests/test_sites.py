"""Sites and positions (issue 23): ``ap`` per position against ``transformer_lens.patching`` on
the embedded model, the position axis of ``atp`` and ``ig`` against their ``"all"`` scores, and
the refusals of bad input before any computation.

``transformer_lens.patching`` runs on the TransformerBridge the project loads (checked here: its
``get_act_patch_*`` functions are called with the bridge, as a TransformerLens user calls them,
with ``reduce="none"`` for per-prompt values).
"""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from transformer_lens import patching

import attrscope
from attrscope.tasks.positions import PositionError
from oracles import one_length_task

TOL = 1e-4
SITES = "resid_pre,attn_out,mlp_out,heads,q,k,v"


@pytest.fixture(scope="module")
def equal_task(embedded_model):
    """Three IOI prompt pairs of one length (positions='each' needs it)."""
    return one_length_task(embedded_model, n=3, seed=11)


def run_and_source(task, direction):
    if direction == "denoising":
        return task.corrupted_tokens, task.clean_tokens
    return task.clean_tokens, task.corrupted_tokens


def first_difference(task) -> int:
    differs = (task.clean_tokens != task.corrupted_tokens).any(0)
    return int(differs.float().argmax())


def reference(model, task, direction, name: str, positions=None) -> torch.Tensor:
    """``transformer_lens.patching`` per prompt, minus the unpatched metric: ``[n, layers,
    pos]`` (layer-level functions) or ``[n, layers, len(positions), heads]`` (head functions,
    on ``positions`` only, through an ``index_df``)."""
    run, source = run_and_source(task, direction)
    rows = torch.arange(task.n)
    metric = lambda logits: task.metric(logits, rows)  # noqa: E731  [batch]: reduce="none"
    with torch.no_grad():
        _, cache = model.run_with_cache(source)
        base = metric(model(run))
        if positions is None:
            fn = getattr(patching, name)
            values = fn(model, run, cache, metric, reduce="none").values  # [layer, pos, n]
            return values.permute(2, 0, 1) - base[:, None, None]
        L, H = model.cfg.n_layers, model.cfg.n_heads
        index = pd.DataFrame(list(itertools.product(range(L), positions, range(H))),
                             columns=["layer", "pos", "head_index"])
        setter = (patching.layer_pos_head_vector_patch_setter)
        values = patching.generic_activation_patch(model, run, cache, metric, setter, name,
                                                   index_df=index, reduce="none").values
        return values.T.reshape(task.n, L, len(positions), H) - base[:, None, None, None]


@pytest.fixture(scope="module")
def each(embedded_model, equal_task):
    return {d: attrscope.attribute(embedded_model, equal_task, "ap", d, SITES, positions="each",
                                   show_progress=False) for d in ("denoising", "noising")}


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("site,function", [("resid_pre", "get_act_patch_resid_pre"),
                                           ("attn_out", "get_act_patch_attn_out"),
                                           ("mlp_out", "get_act_patch_mlp_out")])
def test_layer_sites_match_transformer_lens_patching(embedded_model, equal_task, each, direction,
                                                     site, function):
    scores = each[direction]
    ref = reference(embedded_model, equal_task, direction, function)  # [n, L, pos]
    ours = scores[site][:, :, 0]  # [n, layers, pos]
    L = embedded_model.cfg.n_layers
    torch.testing.assert_close(ours[:, :L], ref, atol=TOL, rtol=0)
    assert ref.abs().max() > 0.1
    if site == "resid_pre":  # layer n_layers: the final stream, patched at each position
        final = ours[:, L]
        assert torch.all(final[:, :-1] == 0)
        run, source = run_and_source(equal_task, direction)
        whole = attrscope.attribute(embedded_model, equal_task, "ap", direction, "resid_pre",
                                    show_progress=False)["resid_pre"]
        # at the answer position the final stream is the source's: the source's metric
        torch.testing.assert_close(final[:, -1], whole[:, L, 0], atol=TOL, rtol=0)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("site,hook", [("heads", "z"), ("q", "q"), ("k", "k"), ("v", "v")])
def test_head_sites_match_transformer_lens_patching_by_pos(embedded_model, equal_task, each,
                                                           direction, site, hook):
    end = int(equal_task.answer_pos[0])
    positions = sorted({first_difference(equal_task), end - 1, end})
    ref = reference(embedded_model, equal_task, direction, hook, positions)  # [n, L, P, H]
    ours = each[direction][site][..., positions].permute(0, 1, 3, 2)
    torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)
    assert ref.abs().max() > 1e-3


def test_named_positions_equal_each_at_those_tokens(embedded_model, equal_task, each):
    named = attrscope.attribute(embedded_model, equal_task, "ap", "denoising", "resid_pre,q",
                                positions="S2,END", show_progress=False)
    assert named.meta["positions"]["labels"] == ["S2", "END"]
    for j, name in enumerate(["S2", "END"]):
        at = equal_task.positions[name]
        for kind in ("resid_pre", "q"):
            want = each["denoising"][kind][torch.arange(equal_task.n), :, :, at]
            torch.testing.assert_close(named[kind][..., j], want, atol=TOL, rtol=0)
    assert named.labels("resid_pre")[:2] == ["0@S2", "0@END"]
    assert named.labels("q")[:2] == ["0.0@S2", "0.0@END"]


@pytest.mark.parametrize("method,settings", [("atp", {}), ("ig", {"n_steps": 3})])
def test_each_sums_to_all(embedded_model, equal_task, method, settings):
    """A linear method (atp), and ig's share of each position, sum over positions to the
    "all" score (heads: today's code path; the sites: the sites path)."""
    every = attrscope.attribute(embedded_model, equal_task, method, "noising", SITES + ",neurons",
                                positions="each", show_progress=False, **settings)
    whole = attrscope.attribute(embedded_model, equal_task, method, "noising", SITES + ",neurons",
                                show_progress=False, **settings)
    for kind in whole.kinds:
        assert every[kind].shape == whole[kind].shape + (equal_task.clean_tokens.shape[1],)
        torch.testing.assert_close(every[kind].sum(-1), whole[kind], atol=TOL, rtol=1e-4)
    assert whole["resid_pre"].abs().max() > 0.1


def test_ig_sites_complete(embedded_model, equal_task):
    """ig's completeness on the new sites: attributions sum to the whole layer's patch."""
    scores = attrscope.attribute(embedded_model, equal_task, "ig", "denoising", "attn_out,q,k",
                                 n_steps=20, show_progress=False)
    for kind in ("attn_out", "q", "k"):
        residual = scores.extras[f"completeness_residual.{kind}"]
        change = scores.extras[f"path_delta.{kind}"]
        assert residual.abs().max() < 1e-2 * max(1.0, float(change.abs().max()))


def test_final_stream_scores_only_the_answer_position(embedded_model, equal_task):
    """The final stream enters the metric through the final norm only at END: atp and ap of
    resid_pre at layer n_layers agree to first order, exactly 0 before END in both."""
    L = embedded_model.cfg.n_layers
    atp = attrscope.attribute(embedded_model, equal_task, "atp", "denoising", "resid_pre",
                              positions="each", show_progress=False)["resid_pre"][:, L, 0]
    assert torch.all(atp[:, :-1] == 0)


# -- bad input, before any computation ----------------------------------------------------------
def refuses_before_running(monkeypatch, call, match):
    from attrscope import engine

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran before the input was refused")

    monkeypatch.setattr(engine.Runner, "_run_cache", no_forward)
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_unknown_site_refused(embedded_model, embedded_task, monkeypatch):
    refuses_before_running(monkeypatch, lambda: attrscope.attribute(
        embedded_model, embedded_task, "ap", components="resid_post", show_progress=False),
        r"Unknown component kind\(s\) \['resid_post'\]")


def test_unknown_position_refused(embedded_model, embedded_task, monkeypatch):
    refuses_before_running(monkeypatch, lambda: attrscope.attribute(
        embedded_model, embedded_task, "atp", components="resid_pre", positions="S2,S3",
        show_progress=False), r"unknown position\(s\) \['S3'\]")


def test_each_on_prompts_of_several_lengths_refused(embedded_model, embedded_task, monkeypatch):
    assert len(set(embedded_task.answer_pos.tolist())) > 1
    refuses_before_running(monkeypatch, lambda: attrscope.attribute(
        embedded_model, embedded_task, "ap", components="heads", positions="each",
        show_progress=False), r"one length.*lengths \(.*\).*named positions")
    assert issubclass(PositionError, ValueError)


def test_atpstar_refuses_sites_it_does_not_define(embedded_model, embedded_task, monkeypatch):
    refuses_before_running(monkeypatch, lambda: attrscope.attribute(
        embedded_model, embedded_task, "atpstar", components="heads,q", show_progress=False),
        r"atpstar scores heads and neurons only.*for q use atp")


def test_sites_without_the_block_adapter_are_refused_by_name(embedded_model, embedded_task):
    """A model run through TransformerLens hooks (no verified adapter) scores heads and neurons
    only; a site is refused naming it and why."""
    from attrscope.components import RESID_PRE
    from attrscope.engine import Runner

    runner = Runner(embedded_model, embedded_task, "denoising", [RESID_PRE], allow_fast=False)
    with pytest.raises(ValueError, match=r"resid_pre \(or positions other than 'all'\) need the "
                                         r"model's block adapter, which is unavailable: not requested"):
        attrscope.attribute(embedded_model, embedded_task, "atp", "denoising", "resid_pre",
                            runner=runner, show_progress=False)


def test_compare_refuses_an_unknown_site_in_one_line():
    """compare takes every site (tests/analysis/test_compare_positions.py); a name that is no
    site is refused before the model loads."""
    from typer.testing import CliRunner

    from attrscope.cli import app

    result = CliRunner().invoke(app, ["compare", "--components", "heads,resid_mid"])
    assert result.exit_code != 0 and "resid_mid" in result.output
    assert "loading model" not in result.output


def test_default_positions_give_todays_scores(embedded_model, embedded_task):
    """positions='all' and the default are one thing for heads and neurons (today's code)."""
    a = attrscope.attribute(embedded_model, embedded_task, "atp", components="heads,neurons",
                            show_progress=False)
    b = attrscope.attribute(embedded_model, embedded_task, "atp", components="heads,neurons",
                            positions="all", show_progress=False)
    for kind in ("heads", "neurons"):
        assert torch.equal(a[kind], b[kind])
    assert "positions" not in a.meta


def test_scores_with_positions_save_load_and_frame(embedded_model, equal_task, tmp_path):
    scores = attrscope.attribute(embedded_model, equal_task, "atp", "denoising", "attn_out,heads",
                                 positions="S2,END", show_progress=False)
    back = attrscope.Scores.load(scores.save(tmp_path / "r.safetensors"))
    assert torch.equal(back["heads"], scores["heads"])
    frame = back.to_dataframe("heads")
    assert list(frame["position"].unique()) == ["S2", "END"]
    assert len(frame) == equal_task.n * 4 * 8 * 2
    row = frame.iloc[1]
    assert row["label"] == "0.0@END" and row["position"] == "END"
    assert float(row["score"]) == pytest.approx(float(scores["heads"][0, 0, 0, 1]))


def test_gap_normalised_positions(embedded_model, equal_task):
    """normalize='gap' divides every position's score by the sample's gap, as it does today."""
    raw = attrscope.attribute(embedded_model, equal_task, "atp", "noising", "resid_pre",
                              positions="S2,END", show_progress=False)
    scaled = attrscope.attribute(embedded_model, equal_task, "atp", "noising", "resid_pre",
                                 positions="S2,END", normalize="gap", show_progress=False)
    gap = raw.extras["metric.run"] - raw.extras["metric.source"]  # noising: run = clean
    torch.testing.assert_close(scaled["resid_pre"], raw["resid_pre"] / gap.view(-1, 1, 1, 1),
                               atol=1e-5, rtol=1e-4)
