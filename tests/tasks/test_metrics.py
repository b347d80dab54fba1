"""Task metrics on hand-computed logits, and set-metric tasks through every forward path."""

import math

import pytest
import torch

import attrscope
from attrscope.components import resolve_kinds
from attrscope.engine import Runner
from attrscope.tasks import PromptPair, TaskDataError, build_task
from attrscope.tasks.metrics import PAD_ID, Readout
from set_tasks import set_pairs


def hand_readout(metric):
    answers = torch.tensor([[1, 2], [4, PAD_ID]])
    distractors = torch.tensor([[3, PAD_ID, PAD_ID], [0, 1, 5]])
    return Readout(metric, answers, distractors)


LOGITS = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                       [2.0, -1.0, 0.5, 0.0, 3.0, 1.0]])


def softmax_row(row):
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def test_logprob_diff_by_hand():
    r0, r1 = LOGITS.tolist()
    expected = [math.log(math.exp(r0[1]) + math.exp(r0[2])) - r0[3],
                r1[4] - math.log(math.exp(r1[0]) + math.exp(r1[1]) + math.exp(r1[5]))]
    got = hand_readout("logprob_diff").from_logits(LOGITS)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0)


def test_prob_diff_by_hand():
    p0, p1 = (softmax_row(r) for r in LOGITS.tolist())
    expected = [p0[1] + p0[2] - p0[3], p1[4] - (p1[0] + p1[1] + p1[5])]
    got = hand_readout("prob_diff").from_logits(LOGITS)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0)


def test_logit_diff_by_hand():
    readout = Readout("logit_diff", torch.tensor([[2], [4]]), torch.tensor([[5], [0]]))
    torch.testing.assert_close(readout.from_logits(LOGITS), torch.tensor([2.0 - 5.0, 3.0 - 2.0]))


@pytest.mark.parametrize("metric", ["logit_diff", "logprob_diff", "prob_diff"])
def test_from_final_equals_from_full_logits(metric):
    torch.manual_seed(0)
    x, W_U, b_U = torch.randn(2, 7), torch.randn(7, 6), torch.randn(6)
    readout = hand_readout(metric) if metric != "logit_diff" else \
        Readout(metric, torch.tensor([[2], [4]]), torch.tensor([[5], [0]]))
    torch.testing.assert_close(readout.from_final(x, W_U, b_U), readout.from_logits(x @ W_U + b_U),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("metric", ["logprob_diff", "prob_diff"])
def test_set_metric_task_reads_each_sample_at_its_answer(random_model, metric):
    task = build_task(random_model, set_pairs(), name="sets", metric=metric)
    assert len(set(task.answer_pos.tolist())) > 1, "mixed prompt lengths expected"
    with torch.no_grad():
        batched = task.metric(random_model(task.clean_tokens))
        for i, pair in enumerate(task.pairs):
            logits = random_model(random_model.to_tokens(pair.clean))[0, -1]
            ids = lambda texts: [random_model.tokenizer(t, add_special_tokens=False)["input_ids"][0]
                                 for t in texts]
            good, bad = ids(pair.answers), ids(pair.distractors)
            if metric == "logprob_diff":
                expected = torch.logsumexp(logits[good], 0) - torch.logsumexp(logits[bad], 0)
            else:
                probs = torch.softmax(logits, 0)
                expected = probs[good].sum() - probs[bad].sum()
            torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("metric", ["logprob_diff", "prob_diff"])
@pytest.mark.parametrize("method", ["ap", "atp", "ig"])
def test_set_metrics_on_the_fast_path_equal_the_bridge(random_model, metric, method):
    """The suffix forward (which unembeds only what the metric needs) agrees with plain hooked
    forwards through the bridge for every method on a set metric."""
    task = build_task(random_model, set_pairs(), name="sets", metric=metric)
    fast = attrscope.attribute(random_model, task, method, "denoising", components=["heads"])
    slow_runner = Runner(random_model, task, "denoising", resolve_kinds(["heads"]), allow_fast=False)
    slow = attrscope.attribute(random_model, task, method, "denoising", components=["heads"],
                               runner=slow_runner)
    assert slow.meta["engine"] == "transformer_lens_hooks"
    if method != "atp":
        assert fast.meta["engine"] == "suffix_forward"
    # The random model puts little probability on any name, so prob_diff scores are ~1e-4:
    # the tolerance is 1e-4 of the largest score there (logprob_diff scores are O(1)).
    scale = float(slow.values["heads"].abs().max())
    assert scale > 1e-5
    atol = 1e-4 * min(scale, 1.0) if metric == "prob_diff" else 1e-4
    torch.testing.assert_close(fast.values["heads"], slow.values["heads"], atol=atol, rtol=0)


def test_set_answers_are_validated(random_model):
    good = set_pairs()[0]
    bad = [PromptPair(good.clean, good.corrupted, (" John", " Johnathanx"), (" Mary",)),
           PromptPair(good.clean, good.corrupted, (" John", " Mary"), (" Mary",)),
           PromptPair(good.clean, good.corrupted, (), (" Mary",))]
    with pytest.raises(TaskDataError) as err:
        build_task(random_model, bad, name="sets", metric="logprob_diff")
    text = str(err.value)
    assert "row 1: answer ' Johnathanx' must be a single token" in text
    assert "row 2: answer and distractor sets share token(s) [' Mary']" in text
    assert "row 3: the answer set is empty" in text
    with pytest.raises(TaskDataError, match="row 1: the logit difference needs one answer, got 2"):
        build_task(random_model, [set_pairs()[0]], name="sets", metric="logit_diff")
    with pytest.raises(ValueError, match="Unknown metric 'kullback'"):
        build_task(random_model, [good], name="sets", metric="kullback")
