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


# -- kl, answer_prob, answer_logprob, user metrics (issue 23) -------------------------------------

def test_kl_equals_a_hand_written_kl():
    torch.manual_seed(0)
    clean, run = torch.randn(3, 6), torch.randn(3, 6) * 2
    reference = torch.log_softmax(clean, dim=-1)
    got = Readout("kl", torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long),
                  reference=reference).from_logits(run)
    expected = []
    for c, r in zip(clean.double().tolist(), run.double().tolist()):
        p, q = softmax_row(c), softmax_row(r)
        expected.append(-sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)
    same = Readout("kl", torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long),
                   reference=reference).from_logits(clean)
    torch.testing.assert_close(same, torch.zeros(3), atol=1e-6, rtol=0)


def test_answer_prob_and_answer_logprob_by_hand():
    p0, p1 = (softmax_row(r) for r in LOGITS.tolist())
    expected = torch.tensor([p0[1] + p0[2], p1[4]])
    torch.testing.assert_close(hand_readout("answer_prob").from_logits(LOGITS), expected,
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(hand_readout("answer_logprob").from_logits(LOGITS),
                               expected.log(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("metric", ["kl", "answer_prob", "answer_logprob", "user"])
def test_whole_vocabulary_metrics_from_final_equal_full_logits(metric):
    torch.manual_seed(0)
    x, W_U, b_U = torch.randn(2, 7), torch.randn(7, 6), torch.randn(6)
    readout = hand_readout(metric if metric != "user" else "logit_diff")
    if metric == "kl":
        readout.reference = torch.log_softmax(torch.randn(2, 6), dim=-1)
    if metric == "user":
        readout.user = lambda logits: logits.logsumexp(-1)
    assert readout.needs_full_logits
    torch.testing.assert_close(readout.from_final(x, W_U, b_U), readout.from_logits(x @ W_U + b_U),
                               atol=1e-5, rtol=0)
    assert not hand_readout("logprob_diff").needs_full_logits


@pytest.fixture(scope="module")
def ioi_model(embedded_model):
    return embedded_model


def test_kl_task_is_zero_on_clean_and_minus_kl_on_corrupted(ioi_model):
    task = attrscope.load_task("ioi", ioi_model, n=5, seed=3, metric="kl")
    assert task.metric_name == "kl" and task.reference_logprobs.shape == (5, ioi_model.cfg.d_vocab)
    with torch.no_grad():
        clean, corrupted = ioi_model(task.clean_tokens), ioi_model(task.corrupted_tokens)
    rows = torch.arange(task.n)
    p = torch.log_softmax(clean[rows, task.answer_pos].double(), -1)
    q = torch.log_softmax(corrupted[rows, task.answer_pos].double(), -1)
    expected = -torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(task.metric(corrupted), expected.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(task.metric(clean), torch.zeros(task.n), atol=1e-5, rtol=0)
    assert float(expected.max()) < -1e-2  # the corruption moves the distribution


def kl_oracle_ap(model, task, direction, name, units):
    """``[n, len(units)]`` exact patching with the kl metric, written from scratch: one hooked
    forward per unit, the clean distribution from a plain forward, KL by hand."""
    run, source = (task.corrupted_tokens, task.clean_tokens) if direction == "denoising" else \
        (task.clean_tokens, task.corrupted_tokens)
    rows = torch.arange(task.n)
    with torch.no_grad():
        log_p = torch.log_softmax(model(task.clean_tokens)[rows, task.answer_pos].double(), -1)

        def minus_kl(logits):
            log_q = torch.log_softmax(logits[rows, task.answer_pos].double(), -1)
            return -(log_p.exp() * (log_p - log_q)).sum(-1)

        base = minus_kl(model(run))
        _, cache = model.run_with_cache(source, names_filter=lambda n: n == name)
        out = torch.empty(task.n, len(units), dtype=torch.float64)
        for col, unit in enumerate(units):
            def patch(act, hook, unit=unit):
                act = act.clone()
                act[:, :, unit] = cache[name][:, :, unit]
                return act

            out[:, col] = minus_kl(model.run_with_hooks(run, fwd_hooks=[(name, patch)])) - base
    return out.float()


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_ap_with_kl_equals_a_hooks_oracle(ioi_model, direction):
    from attrscope.components import HEADS, NEURONS

    task = attrscope.load_task("ioi", ioi_model, n=4, seed=7, metric="kl")
    neurons = [0, 17, 301]
    ap = attrscope.attribute(ioi_model, task, "ap", direction, ("heads", "neurons"),
                             units={"neurons": neurons}, show_progress=False)
    assert ap.meta["engine"] == "suffix_forward" and ap.meta["metric_name"] == "kl"
    for layer in range(ioi_model.cfg.n_layers):
        heads = kl_oracle_ap(ioi_model, task, direction, HEADS.hook_name(layer),
                             list(range(ioi_model.cfg.n_heads)))
        torch.testing.assert_close(ap["heads"][:, layer], heads, atol=1e-4, rtol=1e-4)
        cols = kl_oracle_ap(ioi_model, task, direction, NEURONS.hook_name(layer), neurons)
        torch.testing.assert_close(ap["neurons"][:, layer, neurons], cols, atol=1e-4, rtol=1e-4)
    assert ap["heads"].abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_ap_with_kl_on_a_llama_model_equals_a_hooks_oracle(llama_model, direction):
    """RMSNorm, an untied unembedding, grouped-query attention: the whole-vocabulary readout of
    the suffix forward agrees with hooks there too."""
    from attrscope.components import HEADS

    task = attrscope.load_task("ioi", llama_model, n=3, seed=5, metric="kl")
    ap = attrscope.attribute(llama_model, task, "ap", direction, "heads", show_progress=False)
    assert ap.meta["engine"] == "suffix_forward"
    for layer in range(llama_model.cfg.n_layers):
        oracle = kl_oracle_ap(llama_model, task, direction, HEADS.hook_name(layer),
                              list(range(llama_model.cfg.n_heads)))
        torch.testing.assert_close(ap["heads"][:, layer], oracle, atol=1e-4, rtol=1e-4)
    assert ap["heads"].abs().max() > 1e-3


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("method", ["ap", "atp", "ig"])
def test_user_logit_difference_equals_the_built_in(ioi_model, method, direction):
    import metric_fns

    builtin = attrscope.load_task("ioi", ioi_model, n=4, seed=2)
    settings = {"units": {"neurons": [3, 99, 400]}} if method == "ap" else {}
    expected = attrscope.attribute(ioi_model, builtin, method, direction, ("heads", "neurons"),
                                   show_progress=False, **settings)
    for metric in (metric_fns.logit_diff, "metric_fns:logit_diff"):
        task = attrscope.load_task("ioi", ioi_model, n=4, seed=2, metric=metric)
        got = attrscope.attribute(ioi_model, task, method, direction, ("heads", "neurons"),
                                  show_progress=False, **settings)
        assert got.meta["metric_name"] == "metric_fns:logit_diff"
        assert got.meta["metric"].startswith("metric_fns:logit_diff: user-defined")
        for kind in ("heads", "neurons"):  # unscored units are NaN in both
            torch.testing.assert_close(got[kind], expected[kind], atol=1e-4, rtol=1e-4,
                                       equal_nan=True)
        assert torch.isfinite(got["heads"]).all()


@pytest.mark.parametrize("metric, message", [
    ("metric_fns:wrong_shape", r"metric metric_fns:wrong_shape returned shape \[5, 2\] for logits "
                               r"of shape \[5, \d+\]; it must return \[5\]"),
    ("metric_fns:not_finite", r"metric metric_fns:not_finite is NaN or infinite on 1 of 5 clean "
                              r"prompts of task ioi \(samples \[2\]\)"),
    ("metric_fns:batch_centred", "metric metric_fns:batch_centred does not give each row the same "
                                 "value when the rows come in another order"),
    ("no_such_module_x:f", r"metric 'no_such_module_x:f': cannot import module 'no_such_module_x' "
                           r"\(ModuleNotFoundError"),
    ("metric_fns:absent", "metric 'metric_fns:absent': module 'metric_fns' has no 'absent'"),
    ("metric_fns:NOT_CALLABLE", "metric 'metric_fns:NOT_CALLABLE': 'NOT_CALLABLE' is a int, not a "
                                "function"),
    ("kull back", "Unknown metric 'kull back'; use one of"),
])
def test_bad_user_metrics_are_refused_in_one_line(ioi_model, metric, message):
    from attrscope.tasks import MetricError, check_task

    with pytest.raises(MetricError, match=message) as err:
        attrscope.load_task("ioi", ioi_model, n=5, metric=metric)
    assert "\n" not in str(err.value)
    if "import" in message or "has no" in message or "Unknown" in message or "is a int" in message:
        with pytest.raises(MetricError, match=message):  # refused before a model is loaded
            check_task("ioi", metric=metric)


def test_metrics_without_a_failure_threshold_report_no_failed_samples(ioi_model):
    task = attrscope.load_task("ioi", ioi_model, n=3, metric="answer_logprob")
    assert task.failing(torch.tensor([-1.0, -2.0, -0.5])) is None
    diff = attrscope.load_task("ioi", ioi_model, n=3)
    assert diff.failing(torch.tensor([-1.0, 2.0, 0.0])).tolist() == [True, False, True]


@pytest.mark.parametrize("metric", ["kl", "answer_prob", "answer_logprob", "metric_fns:logit_diff"])
def test_every_method_runs_with_the_new_metrics_in_both_directions(ioi_model, metric):
    """Every registered method, both directions: finite scores, IG's completeness against a
    whole-layer patch by hooks, EAP summed over a head's out-edges equal to node AtP."""
    from attrscope.components import HEADS
    from attrscope.edges.graph import Graph
    from attrscope.methods import METHODS

    task = attrscope.load_task("ioi", ioi_model, n=2, seed=4, metric=metric)
    layer = ioi_model.cfg.n_layers - 2
    name = HEADS.hook_name(layer)
    for direction in ("denoising", "noising"):
        results = {}
        for method in METHODS:
            settings = {"n_steps": 3} if method in ("eap-ig", "eap-ig-act") else {}
            results[method] = attrscope.attribute(ioi_model, task, method, direction,
                                                  show_progress=False, **settings)
            assert all(torch.isfinite(v).all() for v in results[method].values.values()), method
        run, source = (task.corrupted_tokens, task.clean_tokens) if direction == "denoising" \
            else (task.clean_tokens, task.corrupted_tokens)
        with torch.no_grad():
            _, cache = ioi_model.run_with_cache(source, names_filter=lambda n: n == name)
            whole = ioi_model.run_with_hooks(run, fwd_hooks=[(name, lambda act, hook: cache[name])])
            change = task.metric(whole) - task.metric(ioi_model(run))
        torch.testing.assert_close(results["ig"]["heads"][:, layer].sum(-1), change,
                                   atol=1e-3 * max(float(change.abs().max()), 1e-2), rtol=0)
        graph = Graph.of_model(ioi_model)
        for head in range(ioi_model.cfg.n_heads):
            out_edges = torch.nonzero(graph.source_index == graph.head_source(layer, head)).flatten()
            torch.testing.assert_close(results["eap"]["edges"][:, out_edges].sum(-1),
                                       results["atp"]["heads"][:, layer, head], atol=1e-4, rtol=1e-4)


def test_import_path_metric_is_found_in_the_current_folder(tmp_path, monkeypatch):
    """The attrscope command's sys.path lacks the current folder; --metric mine:f still finds
    ./mine.py there."""
    import sys

    from attrscope.tasks.metrics import resolve_metric

    (tmp_path / "mine_metric_mod.py").write_text("def f(logits, rows):\n    return logits[:, 0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    name, user = resolve_metric("mine_metric_mod:f")
    assert name == "mine_metric_mod:f" and user.fn(torch.ones(2, 3), None).tolist() == [1.0, 1.0]
    assert str(tmp_path) not in sys.path


def test_two_user_metrics_of_one_name_key_different_results(ioi_model):
    """A notebook cell run again after an edit defines a new function of the same name: the task
    (so the result key) must differ."""
    from attrscope.keys import task_fingerprint

    def metric(logits, rows):
        return logits[:, 0]

    first = attrscope.load_task("ioi", ioi_model, n=2, metric=metric)

    def metric(logits, rows):  # noqa: F811 (the point of the test)
        return logits[:, 1]

    second = attrscope.load_task("ioi", ioi_model, n=2, metric=metric)
    assert first.metric_name == second.metric_name
    assert task_fingerprint(first) != task_fingerprint(second)
    assert task_fingerprint(first) == task_fingerprint(
        attrscope.load_task("ioi", ioi_model, n=2, metric=first.user_metric.fn))


@pytest.mark.parametrize("metric", ["logit_diff", "logprob_diff", "prob_diff", "kl"])
def test_soft_capped_logits_from_the_needed_columns_equal_the_capped_full_logits(metric):
    """Gemma-2 soft-caps its final logits (c tanh(l / c)); the cap is elementwise, so a metric
    that reads a few columns caps only those (and padding stays out of the sets)."""
    torch.manual_seed(0)
    x, W_U, b_U = 3 * torch.randn(2, 7), torch.randn(7, 6), torch.randn(6)
    readout = hand_readout(metric) if metric != "logit_diff" else \
        Readout(metric, torch.tensor([[2], [4]]), torch.tensor([[5], [0]]))
    if metric == "kl":
        readout.reference = torch.log_softmax(torch.randn(2, 6), dim=-1)
    full = x @ W_U + b_U
    cap = float(full.abs().max()) / 2  # a cap that changes the larger logits
    capped = torch.tanh(full / cap) * cap
    got = readout.from_final(x, W_U, b_U, softcap=cap)
    torch.testing.assert_close(got, readout.from_logits(capped), atol=1e-5, rtol=0)
    assert not torch.allclose(got, readout.from_logits(full), atol=1e-3)  # the cap mattered
