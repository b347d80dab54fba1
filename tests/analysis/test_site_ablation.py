"""Ablation of the sites (resid_pre with the final stream, attn_out, mlp_out, q, k, v), over all
positions (:class:`Ablator`) and per (unit, position) cell (:class:`CellAblator`), against plain
TransformerLens hooks that replace the same activation with values computed here from the
model's own caches (issue 23), and against ``ap`` noising at that cell."""

import functools

import pytest
import torch

from attrscope import attribute
from attrscope.analysis.ablation import Ablator
from attrscope.analysis.position_ablation import CellAblator
from attrscope.components import KINDS, Component
from attrscope.engine import Runner, hooks_attached
from attrscope.sites import resolve_positions

SITES = ("resid_pre", "attn_out", "mlp_out", "q", "k", "v")
NAMES = ["S1", "S2", "END"]


def tl_hook(kind: str, layer: int, n_layers: int) -> str:
    """The TransformerLens hook of a site (the final stream: the last block's resid_post)."""
    if kind == "resid_pre":
        return (f"blocks.{layer}.hook_resid_pre" if layer < n_layers
                else f"blocks.{n_layers - 1}.hook_resid_post")
    if kind in ("attn_out", "mlp_out"):
        return f"blocks.{layer}.hook_{kind}"
    return f"blocks.{layer}.attn.hook_{kind}"


def cells(n_layers: int, n_kv: int) -> list[Component]:
    return [Component("resid_pre", 1, 0, "S2"), Component("resid_pre", n_layers, 0, "END"),
            Component("attn_out", 1, 0, "S2"), Component("mlp_out", 0, 0, "END"),
            Component("q", 2, 1, "END"), Component("k", 1, 3 % n_kv, "S2"),
            Component("v", 0, 2 % n_kv, "S1"), Component("resid_pre", 0, 0, "S1")]


def plain_mean(acts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-position mean over prompts, a prompt counting at positions below its length; a
    position no prompt reaches takes the mean over every real position: ``[1, seq, ...]``."""
    seq = acts.shape[1]
    real = [(i, p) for i in range(acts.shape[0]) for p in range(int(lengths[i]))]
    overall = sum(acts[i, p].double() for i, p in real) / len(real)
    out = []
    for p in range(seq):
        at = [acts[i, p].double() for i in range(acts.shape[0]) if p < int(lengths[i])]
        out.append(sum(at) / len(at) if at else overall)
    return torch.stack(out)[None].float()


def replacement(model, task, name: str, how: str) -> torch.Tensor:
    """The replacing values at hook ``name``, from the model's own caches: the corrupted
    prompts' (other), zeros, or the per-position mean over clean and corrupted (mean)."""
    def cached(tokens):
        return model.run_with_cache(tokens, names_filter=lambda n: n == name)[1][name]

    with torch.no_grad():
        if how == "other":
            return cached(task.corrupted_tokens)
        clean = cached(task.clean_tokens)
        if how == "zero":
            return torch.zeros_like(clean[:1])
        corrupted = cached(task.corrupted_tokens)
    return plain_mean(torch.cat([clean, corrupted]), (task.answer_pos + 1).repeat(2))


def _replace_hook(unit, at, values, per_layer, act, hook=None):
    act = act.clone()
    for i in range(act.shape[0]):
        row = i if values.shape[0] > 1 else 0
        for p in (range(act.shape[1]) if at is None else [int(at[i])]):
            if per_layer:
                act[i, p] = values[row, p].to(act.dtype)
            else:
                act[i, p, unit] = values[row, p, unit].to(act.dtype)
    return act


def hooked_metric(model, task, components, how) -> torch.Tensor:
    """Oracle: the clean run with one TransformerLens hook per component, each replacing the
    component's activation at its prompt's token (every position when it has none)."""
    L = model.cfg.n_layers
    hooks = []
    for c in components:
        name = tl_hook(c.kind, c.layer, L)
        at = None if c.position is None else task.positions[c.position]
        hooks.append((name, functools.partial(_replace_hook, c.unit, at,
                                              replacement(model, task, name, how),
                                              c.kind in ("resid_pre", "attn_out", "mlp_out"))))
    with torch.no_grad(), hooks_attached(model, hooks):
        return task.metric(model(task.clean_tokens)).float()


@pytest.mark.parametrize("family", ["random", "llama"])
@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_site_cells_ablated_in_one_run_equal_one_hook_per_cell(request, family, how):
    """On the GPT-2 model and on the Llama one (RMSNorm, rotary positions, grouped-query
    attention: ``hook_q`` / ``hook_k`` before the rotary embedding, 2 key/value heads)."""
    random_model = request.getfixturevalue(f"{family}_model")
    random_task = request.getfixturevalue(f"{family}_task")
    L = random_model.cfg.n_layers
    chosen = cells(L, KINDS["k"].n_units(random_model.cfg))
    ablator = CellAblator(resolve_positions(random_task, NAMES), random_model, random_task,
                          how=how, kinds=SITES)
    sets = [chosen, chosen[:2], chosen[2:5], *[[c] for c in chosen]]
    got = ablator.metrics(sets)
    assert torch.isfinite(got).all()
    for s, components in enumerate(sets):
        expected = hooked_metric(random_model, random_task, components, how)
        torch.testing.assert_close(got[s], expected, atol=1e-4, rtol=0,
                                   msg=lambda m: f"{how} {[c.label for c in components]}: {m}")
    # every single cell does something, except under "other" a cell before the first token
    # where clean and corrupted differ (the other prompt's value is the run's own there)
    differs = (random_task.clean_tokens != random_task.corrupted_tokens).int().argmax(dim=1)
    moved = (got[3:] - ablator.base).abs().amax(dim=1)
    for c, change in zip(chosen, moved):
        before = bool((random_task.positions[c.position] < differs).all())
        assert (change < 1e-5) if how == "other" and before else (change > 1e-4), c.label


@pytest.mark.parametrize("how", ["zero", "mean", "other"])
def test_sites_ablated_at_every_position_equal_hooks(random_model, random_task, how):
    L = random_model.cfg.n_layers
    chosen = [Component("resid_pre", 2, 0), Component("attn_out", 0, 0),
              Component("mlp_out", 1, 0), Component("q", 1, 0), Component("k", 2, 1),
              Component("v", 1, 3), Component("resid_pre", L, 0)]
    ablator = Ablator(random_model, random_task, how=how, kinds=SITES)
    sets = [chosen[1:6], *[[c] for c in chosen]]
    got = ablator.metrics(sets)
    for s, components in enumerate(sets):
        expected = hooked_metric(random_model, random_task, components, how)
        torch.testing.assert_close(got[s], expected, atol=1e-4, rtol=0,
                                   msg=lambda m: f"{how} {[c.label for c in components]}: {m}")
    assert ((got - ablator.base).abs().amax(dim=1) > 1e-4).all()


@pytest.mark.parametrize("family", ["random", "llama"])
def test_other_ablation_of_one_site_cell_is_noising_patching_there(request, family):
    """On the GPT-2 model and on the Llama one (rotary positions, grouped-query attention: k and
    v are key/value heads, replaced before the rotary embedding)."""
    model = request.getfixturevalue(f"{family}_model")
    task = request.getfixturevalue(f"{family}_task")
    names = ["S2", "END"]
    scores = attribute(model, task, "ap", "noising", ",".join(SITES), positions=names,
                       show_progress=False)
    ablator = CellAblator(resolve_positions(task, names), model, task, how="other", run="clean",
                          kinds=SITES)
    pool = [c for kind in SITES for c in ablator.components(kind)]
    assert len(pool) == sum(s[0].numel() for s in (scores[kind] for kind in SITES))
    changes = ablator.metrics([[c] for c in pool]) - ablator.base  # [cells, n]
    for c, change in zip(pool, changes):
        torch.testing.assert_close(change, scores[c.kind][:, c.layer, c.unit,
                                                          names.index(c.position)],
                                   atol=1e-4, rtol=0, msg=lambda m: f"{c.kind} {c.label}: {m}")
    assert changes.abs().max() > 1e-2


def test_site_pool_labels_and_refusals(random_model, random_task):
    L = random_model.cfg.n_layers
    ablator = CellAblator(resolve_positions(random_task, ["END"]), random_model, random_task,
                          kinds=("resid_pre", "k"))
    pool = ablator.components("resid_pre")
    assert [c.label for c in pool] == [f"{layer}@END" for layer in range(L + 1)]
    assert len(Ablator(random_model, random_task, kinds=("q",)).components("q")) == L * 4
    with pytest.raises(ValueError, match=rf"resid_pre {L + 1}@END does not exist: the model has "
                                         rf"{L + 1} layers of resid_pre"):
        ablator.metrics([[Component("resid_pre", L + 1, 0, "END")]])
    fallback = Runner(random_model, random_task, "noising", [KINDS["heads"], KINDS["attn_out"]],
                      allow_fast=False)
    with pytest.raises(ValueError, match=r"^attn_out \(or positions other than 'all'\) need the "
                                         r"model's block adapter"):
        Ablator(random_model, random_task, kinds=("heads", "attn_out"), runner=fallback)


def test_compare_verifies_sites_over_all_positions_and_says_what_zero_means(random_model,
                                                                            random_task):
    """compare over all positions verifies each site as it does heads: top-k sets against
    random sets and faithfulness curves, the top-k change equal to a fresh ablation of those
    units; zero ablation of resid_pre is said in one line."""
    from attrscope.analysis.compare import compare
    from attrscope.analysis.report import dashboard_rows

    log: list[str] = []
    kinds = ("resid_pre", "mlp_out", "k")
    c = compare(random_model, random_task, ("ap", "atp"), ("noising",), kinds, ablation="zero",
                k=2, n_boot=20, n_random=4, show_progress=False, log=log.append)
    assert [line for line in log if "zero ablation of resid_pre" in line] == [
        "note: zero ablation of resid_pre sets the whole residual stream entering that block (and "
        "position) to 0: the embedding and every earlier block's output there."]
    assert set(c.verification) == set(kinds) and {kd for _, kd in c.faithfulness} == set(kinds)
    fresh = Ablator(random_model, random_task, how="zero", kinds=kinds)
    for kind in c.verification:
        for (m, d), s in c.results.items():
            ranked = torch.argsort(s[kind].double().mean(0).flatten().abs(), descending=True,
                                   stable=True)[:2]
            units = s[kind].shape[2]
            top = [Component(kind, int(i) // units, int(i) % units) for i in ranked]
            row = next(r for r in c.verification[kind] if r["set"] == "top 2"
                       and r["source"] == f"{m} {d}")
            assert row["components"] == " ".join(t.label for t in top)
            change = float((fresh.metrics([top])[0] - fresh.base).mean())
            assert row["metric_change"] == pytest.approx(change, abs=1e-4)
        assert all(torch.isfinite(torch.tensor(curve["f"])).all()
                   for (_, kd), curve in c.faithfulness.items() if kd == kind)
    assert all(not r["verification"].get("skipped") for r in dashboard_rows(c))
