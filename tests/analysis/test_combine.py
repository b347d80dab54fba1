"""Latent-aware scores: the combinations by hand, and the planted AND/OR pairs recovered where
each single direction misses one pair."""

import pytest
import torch

import attrscope
from attrscope.analysis.combine import COMBINATIONS, combine_directions, combine_values
from attrscope.analysis.ground_truth import load_ground_truth, precision_recall, relevant
from attrscope.edges.circuit import CircuitEvaluator
from attrscope.scores import Scores


def test_combinations_by_hand():
    # 2 samples, 3 components: an AND-like one, an OR-like one, a plain one
    den = torch.tensor([[0.0, 2.0, 1.0], [0.2, 2.0, 3.0]])
    noi = torch.tensor([[-2.0, 0.0, -1.0], [-2.0, -0.4, -3.0]])
    latent = torch.tensor([True, True, False])
    mean = combine_values(den, noi, "latent-mean", latent)
    assert torch.allclose(mean, torch.tensor([[-1.0, -1.0, -1.0], [-1.1, -1.2, -3.0]]))
    larger = combine_values(den, noi, "latent-larger", latent)
    assert torch.equal(larger, torch.tensor([[-2.0, -2.0, -1.0], [-2.0, -2.0, -3.0]]))
    everywhere = combine_values(den, noi, "mean", latent)
    assert torch.allclose(everywhere[:, 2], torch.tensor([-1.0, -3.0]))
    with pytest.raises(ValueError, match="Unknown combination 'max'"):
        combine_values(den, noi, "max", latent)


def _scores(values: torch.Tensor, direction: str, method: str = "ap") -> Scores:
    return Scores({"heads": values}, meta={"method": method, "direction": direction})


def test_directions_must_be_given_in_order_and_of_one_method():
    d, n = _scores(torch.zeros(2, 1, 2), "denoising"), _scores(torch.zeros(2, 1, 2), "noising")
    with pytest.raises(ValueError, match="denoising result first"):
        combine_directions(n, d)
    with pytest.raises(ValueError, match="one method in two directions"):
        combine_directions(d, _scores(torch.zeros(2, 1, 2), "noising", "ig"))


@pytest.fixture(scope="module")
def planted():
    model = attrscope.load_model("attrscope-planted")
    return model, attrscope.load_task("planted", model, n=20), load_ground_truth()


def _flagged(s: Scores, kind: str = "heads") -> set[str]:
    """Components with |mean| >= 0.1 of the kind's largest (the ground-truth module's rule)."""
    mean, labels = s.mean(kind).flatten().abs(), s.labels(kind)
    return {labels[i] for i in range(len(labels)) if mean[i] > 0 and mean[i] >= 0.1 * mean.max()}


def test_latent_aware_scores_recover_both_planted_pairs(planted):
    """Noising finds the AND pair only, denoising the OR pair only; every combination finds both
    pairs and the single-path head, and nothing else."""
    model, task, truth = planted
    den, noi = (attrscope.attribute(model, task, "ap", d, ("heads",), show_progress=False)
                for d in ("denoising", "noising"))

    def recall(s: Scores, which: str) -> float:
        return precision_recall(_flagged(s), set(truth["heads"][which]))["recall"]

    assert (recall(noi, "and"), recall(noi, "or")) == (1.0, 0.0)
    assert (recall(den, "and"), recall(den, "or")) == (0.0, 1.0)
    for how in COMBINATIONS:
        combined = combine_directions(den, noi, how)
        assert combined.direction == "noising" and combined.method == f"ap:{how}"
        assert _flagged(combined) == relevant(truth, "heads")
    latent = combine_directions(den, noi).extras["latent.heads"]
    labels = den.labels("heads")
    assert {labels[i] for i in latent.flatten().nonzero().flatten().tolist()} == set(
        truth["heads"]["and"] + truth["heads"]["or"])


def test_latent_aware_edge_scores_are_a_circuit_score(planted):
    model, task, _ = planted
    den, noi = (attrscope.attribute(model, task, "exact", d, show_progress=False)
                for d in ("denoising", "noising"))
    combined = combine_directions(den, noi, "latent-mean")
    index = den.graph.edge_index
    latent = combined.extras["latent.edges"].flatten()
    for head in ("0.0", "0.1", "0.2", "0.3"):  # the AND and OR heads' edges into the MLP
        assert latent[index[f"{head} -> mlp 0"]]
    assert not latent[index["0.4 -> logits"]]  # the single path: both directions agree
    curve = CircuitEvaluator.for_task(model, task).curve(combined.mean("edges").flatten())
    assert 0 < curve["cpr"] <= 1.0 + 1e-6 and curve["cmd"] >= 0


def test_compare_adds_the_combination_and_reports_it(planted, tmp_path):
    """compare(combine=...) adds METHOD:HOW as a noising result: compared with the others,
    verified, scored against the planted ground truth (recall 1 where ap noising has 0.6), and
    written into the report."""
    from attrscope.analysis.compare import compare
    from attrscope.analysis.ground_truth import evaluate
    from attrscope.analysis.report import write_report

    model, task, truth = planted
    c = compare(model, task, ("ap", "ig"), kinds=("heads",), combine=("latent-mean",),
                n_random=3, n_boot=50, show_progress=False, log=lambda line: None,
                method_settings={"n_steps": 4})
    assert ("ap:latent-mean", "noising") in c.results
    assert ("ap:latent-mean", "denoising") not in c.results
    assert any(a["a"] == "ap noising" and a["b"] == "ap:latent-mean noising"
               for a in c.agreements)
    recall = {row["who"]: row["recall"] for row in evaluate(c, truth)
              if row["what"] == "relevant components"}
    assert recall["ap:latent-mean noising"] == 1.0 > recall["ap noising"]
    paths = write_report(c, tmp_path)
    assert "ap:latent-mean" in paths["report"].read_text()
    with pytest.raises(ValueError, match="Unknown combination"):
        compare(model, task, ("ap",), combine=("max",), show_progress=False)
