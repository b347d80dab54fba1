"""Counterfactual search: exact objective against ap and a hooked oracle, the one-hot gradient
against finite differences, constraints, determinism, and beating the standard IOI corruption."""

import pytest
import torch

import attrscope
from attrscope.analysis.counterfactual import (PatchingObjective, find_counterfactual,
                                               patching_scores, prompt_ids)
from attrscope.analysis.path import parse_component


@pytest.fixture(scope="module")
def ioi_pair(embedded_model):
    return attrscope.load_task("ioi", embedded_model, n=1, seed=0).pairs[0]


def token_id(model, text):
    (i,) = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return i


def objective_for(model, pair, label, kind, direction):
    return PatchingObjective(model, prompt_ids(model, pair.clean), token_id(model, pair.answer),
                             token_id(model, pair.distractor), parse_component(label, kind, model.cfg),
                             direction)


def oracle_scores(model, pair, corrupted_rows, label, kind, direction):
    """Patching scores with full hooked forwards: run, source, patch the unit at every position;
    one per row of ``corrupted_rows`` (token id lists of one length), batched."""
    c = parse_component(label, kind, model.cfg)
    name = c.spec.hook_name(c.layer)
    corrupted = torch.tensor(corrupted_rows)
    clean = torch.tensor([prompt_ids(model, pair.clean)]).expand_as(corrupted)
    run, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    a, d = token_id(model, pair.answer), token_id(model, pair.distractor)
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=lambda n: n == name)

        def patch(act, hook):
            act = act.clone()
            act[:, :, c.unit] = cache[name][:, :, c.unit]
            return act

        base = model(run)[:, -1]
        patched = model.run_with_hooks(run, fwd_hooks=[(name, patch)])[:, -1]
    return ((patched[:, a] - patched[:, d]) - (base[:, a] - base[:, d])).tolist()


def perplexities(model, rows):
    """Perplexity of each token id list in ``rows`` (of one length), batched."""
    ids = torch.tensor(rows)
    with torch.no_grad():
        logits = model(ids)[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return nll.mean(dim=1).exp().tolist()


def perplexity(model, ids):
    return perplexities(model, [ids])[0]


_AP = {}


def ap_scores(model, pair, direction, kind):
    """``patching_scores`` of the pair, computed once per (direction, kind) for this module."""
    key = (id(model), pair, direction, kind)
    if key not in _AP:
        _AP[key] = patching_scores(model, pair.clean, pair.corrupted, pair.answer,
                                   pair.distractor, direction, kind)
    return _AP[key]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("label, kind", [("3.6", "heads"), ("1.5", "heads"), ("2.300", "neurons")])
def test_exact_objective_matches_ap_and_hooked_oracle(embedded_model, ioi_pair, label, kind, direction):
    model = embedded_model
    objective = objective_for(model, ioi_pair, label, kind, direction)
    assert objective.fast is not None  # the embedded GPT-2 takes the suffix-only path
    standard = prompt_ids(model, ioi_pair.corrupted)
    other = list(standard)
    other[3] = token_id(model, " sunny")  # a second candidate, off the template
    result = objective.evaluate(torch.tensor([standard, other]))
    c = parse_component(label, kind, model.cfg)
    ap = ap_scores(model, ioi_pair, direction, kind)[c.layer, c.unit]
    assert float(result["score"][0]) == pytest.approx(float(ap), abs=1e-4)
    oracle = oracle_scores(model, ioi_pair, [standard, other], label, kind, direction)
    for row, ppl in enumerate(perplexities(model, [standard, other])):
        assert float(result["score"][row]) == pytest.approx(oracle[row], abs=1e-4)
        assert float(result["perplexity"][row]) == pytest.approx(ppl, rel=1e-4)
    sign = 1 if direction == "denoising" else -1
    torch.testing.assert_close(result["objective"], sign * result["score"])
    # the gradient pass (hooked forwards, embedding from the one-hot input) agrees
    value, _ = objective.gradient(torch.tensor([standard]))
    assert float(value[0]) == pytest.approx(float(result["objective"][0]), abs=1e-4)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_one_hot_gradient_matches_finite_differences(embedded_model, ioi_pair, direction):
    """grad[p, v] - grad[p, x_p] is the derivative of the objective when the one-hot input at p
    moves from x_p toward v."""
    model = embedded_model
    objective = objective_for(model, ioi_pair, "3.1", "heads", direction)
    tokens = torch.tensor(prompt_ids(model, ioi_pair.corrupted))
    _, grad = objective.gradient(tokens[None])
    base = torch.nn.functional.one_hot(tokens, grad.shape[-1]).to(torch.float32)
    moves = [(15, token_id(model, " Mary")), (18, token_id(model, " John")),
             (4, token_id(model, " sunny"))]
    steps = torch.zeros(len(moves), *base.shape)
    for i, (position, v) in enumerate(moves):
        steps[i, position, v], steps[i, position, tokens[position]] = 1.0, -1.0
    h = 1e-2
    # every +h and -h move in one batch: rows 0..2 up, 3..5 down
    onehots = torch.cat([base + h * steps, base - h * steps])
    with torch.no_grad():
        scores = objective._scores(tokens.expand(len(onehots), -1), onehots)[0]
    numeric = objective.objective_of(scores[:len(moves)] - scores[len(moves):]) / (2 * h)
    checked = 0
    for i, (position, v) in enumerate(moves):
        analytic = float(grad[0, position, v] - grad[0, position, tokens[position]])
        assert analytic == pytest.approx(float(numeric[i]), rel=2e-2, abs=2e-2)
        checked += abs(analytic) > 0.1
    assert checked >= 1  # at least one direction with a real slope


def check_constraints(model, pair, found, max_changes, max_ratio):
    clean_ids, found_ids = prompt_ids(model, pair.clean), prompt_ids(model, found.corrupted)
    assert len(found_ids) == len(clean_ids)
    changed = sum(a != b for a, b in zip(clean_ids, found_ids))
    assert changed == found.n_changed <= max_changes
    ratio = perplexity(model, found_ids) / perplexity(model, clean_ids)
    assert ratio == pytest.approx(found.perplexity_ratio, rel=1e-4)
    assert ratio <= max_ratio * (1 + 1e-6)


def test_found_counterfactuals_beat_the_standard_corruption(embedded_model, ioi_pair):
    """For the four heads with the largest standard-corruption scores on this prompt, the search
    (from the clean prompt, at most 3 changed tokens, perplexity at most doubled, 32 candidates
    per step, beam 2) gives the target a higher denoising score than the task's own corruption,
    for at least 3 of them."""
    model, pair = embedded_model, ioi_pair
    standard = ap_scores(model, pair, "denoising", "heads")
    n_heads = model.cfg.n_heads
    chosen = standard.flatten().abs().argsort(descending=True)[:4].tolist()
    assert standard.flatten()[chosen].abs().min() > 1.0  # nontrivial scores
    wins = 0
    for i, index in enumerate(chosen):
        layer, head = divmod(index, n_heads)
        target = parse_component(f"{layer}.{head}", "heads", model.cfg)
        # the standard prompt's ap scores are the same for every target: checked once
        # half the default candidates and beam: the same claim at a fraction of the cost (the
        # default search took 16 minutes of this test under CI load)
        found = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                                    max_changes=3, max_perplexity_ratio=2.0, n_candidates=32,
                                    beam=2, standard=pair.corrupted if i == 0 else None)
        check_constraints(model, pair, found, 3, 2.0)
        assert found.score == pytest.approx(float(found.scores[layer, head]), abs=1e-4)
        if i == 0:
            assert found.standard_score == pytest.approx(float(standard[layer, head]), abs=1e-6)
        assert found.scores.shape == standard.shape
        wins += found.score > float(standard[layer, head])
    assert wins >= 3


def test_deterministic_given_a_seed_and_tight_constraints_hold(embedded_model, ioi_pair):
    model, pair = embedded_model, ioi_pair
    target = parse_component("1.5", "heads", model.cfg)
    settings = dict(max_changes=1, max_perplexity_ratio=1.1, n_iters=3, n_candidates=24, beam=2)
    first = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target, seed=5,
                                **settings)
    again = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target, seed=5,
                                **settings)
    assert first.corrupted == again.corrupted and first.score == again.score
    assert first.history == again.history
    check_constraints(model, pair, first, 1, 1.1)
    # The search keeps a step only if it raises the objective, so it never ends below its start
    # (the clean prompt, score 0); how far above depends on ties that rounding decides, so no
    # sign is asserted here (the other tests check that it finds large scores).
    assert first.score >= -1e-4
    assert first.score == pytest.approx(float(first.scores[1, 5]), abs=1e-4)


def test_noising_search_makes_the_target_needed(embedded_model, ioi_pair):
    model, pair = embedded_model, ioi_pair
    target = parse_component("3.5", "heads", model.cfg)
    found = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                                "noising", max_changes=2, n_iters=3, n_candidates=24, beam=2)
    check_constraints(model, pair, found, 2, 2.0)
    assert found.score < 0  # noising sign: corrupting the target lowers the metric
    assert found.score == pytest.approx(float(found.scores[3, 5]), abs=1e-4)


def test_bad_inputs_are_refused_with_the_reason(embedded_model, ioi_pair):
    model, pair = embedded_model, ioi_pair
    target = parse_component("3.5", "heads", model.cfg)
    with pytest.raises(ValueError, match="answer 'Lucas' must be a single token.*leading space"):
        find_counterfactual(model, pair.clean, "Lucas", pair.distractor, target)
    with pytest.raises(ValueError, match="start prompt has .* tokens"):
        find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                            start=pair.clean + " and")
    with pytest.raises(ValueError, match="max_perplexity_ratio"):
        find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                            max_perplexity_ratio=0.5)
    with pytest.raises(ValueError, match="max_changes"):
        find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target, max_changes=0)


def test_interrupted_search_resumes_at_its_step_with_the_same_result(embedded_model, ioi_pair,
                                                                      tmp_path, monkeypatch):
    from attrscope.analysis.counterfactual import PatchingObjective
    from attrscope.checkpoint import Checkpoint

    model, pair = embedded_model, ioi_pair
    target = parse_component("1.5", "heads", model.cfg)
    settings = dict(max_changes=2, n_iters=4, n_candidates=16, beam=2, patience=10, seed=3)
    reference = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                                    **settings)
    original, calls = PatchingObjective.gradient, {"n": 0}

    def gradient_then_stop(self, tokens):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, tokens)

    folder = tmp_path / "search.parts"
    with monkeypatch.context() as m:
        m.setattr(PatchingObjective, "gradient", gradient_then_stop)
        with pytest.raises(KeyboardInterrupt):
            find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                                checkpoint=Checkpoint(folder, "k"), **settings)
    checkpoint = Checkpoint(folder, "k")
    resumed = find_counterfactual(model, pair.clean, pair.answer, pair.distractor, target,
                                  checkpoint=checkpoint, **settings)
    assert checkpoint.reused == 2 and 1 <= checkpoint.computed <= 2  # steps 1-2 not redone
    assert resumed.corrupted == reference.corrupted and resumed.score == reference.score
    assert resumed.history == reference.history
    assert torch.equal(resumed.scores, reference.scores)
