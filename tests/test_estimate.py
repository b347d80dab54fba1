"""The calibrated time estimate: pass weights from the model's shape, no timing in the asserts."""

import pytest
import torch

import attrscope
from attrscope.estimate import (SUFFIX_OVERHEAD, ForwardShape, estimate_seconds, node_passes,
                                setup_forwards, timed_forward)


def test_pass_weights_follow_the_shape(random_model, random_task):
    shape = ForwardShape.of(random_model, random_task)
    assert 0 < shape.span <= shape.positions
    full = shape.positions * (shape.n_layers * shape.block_flops + shape.unembed_flops)
    suffix = (shape.span * shape.n_layers / 2 * shape.block_flops + shape.unembed_flops) / full
    assert shape.fraction("patch_each_unit") == pytest.approx(SUFFIX_OVERHEAD * suffix)
    assert shape.fraction("integrate_inputs") == 1.0  # full passes
    assert 0 < shape.fraction("backward_per_dropped_layer") < shape.fraction("run_source_and_backward") < 1


def test_estimate_is_counted_passes_times_their_weight(random_model, random_task):
    shape = ForwardShape.of(random_model, random_task)
    kinds = ["heads", "neurons"]
    count = node_passes("ap", {}, random_model.cfg, random_task.n, kinds)
    seconds = estimate_seconds(random_model, random_task, "ap", {}, kinds, per_pass=0.5)
    setup = random_task.n * 0.5 * setup_forwards(shape, "node")
    assert seconds == pytest.approx(count * 0.5 * shape.fraction("patch_each_unit") + setup)
    # screened: the screen's passes plus top-K + audit units, fewer than every unit here
    screened = estimate_seconds(random_model, random_task, "ap",
                                {"screen": "atp", "screen_top_k": 5, "screen_audit": 5}, kinds,
                                per_pass=0.5)
    assert 0 < screened < seconds
    edges = estimate_seconds(random_model, random_task, "eap", {}, [], per_pass=0.5)
    assert edges > 0


def test_timed_forward_measures_a_positive_time(random_model, random_task):
    assert timed_forward(random_model, random_task.clean_tokens) > 0


def _filler_task(model, words: int):
    """Two pairs whose prompts differ at their first word, then share ``words`` filler words
    before the answer: positions="each" has ``words + 2`` positions to patch from the first
    difference on."""
    from attrscope.tasks import build_task
    from attrscope.tasks.base import PromptPair

    middle = " the" * words
    pairs = [PromptPair(f"When{a}{middle} and", f"When{b}{middle} and", " Mary", " John")
             for a, b in ((" Mary", " John"), (" John", " Mary"))]
    return build_task(model, pairs, name=f"filler-{words}")


def _counted_flops(model, task, kinds, monkeypatch) -> float:
    """FLOPs of an ap run at positions="each" on ``kinds``, counted where the work is done:
    every row-position a block of the forward computes, every row unembedded (the run's and
    source's caches made before counting: they are not per-patch work)."""
    from attrscope.arch import forward
    from attrscope.components import KINDS
    from attrscope.engine import Runner
    from attrscope.sites import site_activations

    shape = ForwardShape.of(model, task)
    counted = {"flops": 0.0}
    block, metric = forward._block, forward.metric

    def counting_block(a, layer, resid, positions, query_at, plan):
        rows_positions = resid.shape[0] * (1 if query_at is not None else resid.shape[1])
        counted["flops"] += rows_positions * shape.block_flops
        return block(a, layer, resid, positions, query_at, plan)

    def counting_metric(adapter, resid, plan, answer_pos, readout):
        counted["flops"] += resid.shape[0] * shape.unembed_flops
        return metric(adapter, resid, plan, answer_pos, readout)

    runner = Runner(model, task, "denoising", [KINDS[k] for k in kinds])
    runner.metric_run, runner.metric_source  # noqa: B018 - the caches, before counting
    for which in ("run", "source"):
        site_activations(runner, [KINDS[k] for k in kinds], which)
    with monkeypatch.context() as patch:
        patch.setattr(forward, "_block", counting_block)
        patch.setattr(forward, "metric", counting_metric)
        scores = attrscope.attribute(model, task, "ap", "denoising", kinds, positions="each",
                                     runner=runner, show_progress=False)
    assert scores[kinds[0]].shape[-1] == shape.positions
    return counted["flops"]


def test_each_position_estimate_grows_with_the_prompt_as_the_counted_work(embedded_model,
                                                                           monkeypatch):
    """positions="each": one patch per unit and position, each a suffix from its layer and its
    position. The estimate (per_pass=1: in full forwards) must follow the FLOPs the run really
    computes, counted in the forward, as the prompts grow (quadratically in their span)."""
    estimates, counted = [], []
    kinds = ["resid_pre", "mlp_out", "heads", "q"]
    for words in (2, 8, 20):
        task = _filler_task(embedded_model, words)
        shape = ForwardShape.of(embedded_model, task)
        full = shape.positions * (shape.n_layers * shape.block_flops + shape.unembed_flops)
        seconds = estimate_seconds(embedded_model, task, "ap", {"positions": "each"}, kinds,
                                   per_pass=1.0, setup=False)  # the caches are not counted
        estimates.append(seconds / SUFFIX_OVERHEAD * full)  # the FLOPs it assumes
        counted.append(_counted_flops(embedded_model, task, kinds, monkeypatch))
        # one counted pass per unit, position and prompt
        assert node_passes("ap", {"positions": "each"}, embedded_model.cfg, task.n,
                           ["resid_pre"], seq=shape.positions) == \
            task.n * (embedded_model.cfg.n_layers + 1) * shape.positions
    for estimate, work in zip(estimates, counted):
        assert estimate == pytest.approx(work, rel=0.1)
    for i in (1, 2):  # grows as the work does, and faster than the prompt's length
        assert estimates[i] / estimates[0] == pytest.approx(counted[i] / counted[0], rel=0.15)
    assert estimates[2] / estimates[0] > 2 * (20 + 4) / (2 + 4)
    # "all" is one patch per unit: less work than "each"
    task = _filler_task(embedded_model, 20)
    assert estimate_seconds(embedded_model, task, "ap", {}, ["resid_pre"], per_pass=1.0) \
        < estimate_seconds(embedded_model, task, "ap", {"positions": "each"}, ["resid_pre"],
                           per_pass=1.0)


def test_named_positions_estimate_one_patch_per_name(embedded_model):
    """Named positions: one pass per unit and name, each a suffix from that name's token."""
    task = attrscope.load_task("ioi", embedded_model, n=4)
    cfg = embedded_model.cfg
    one = node_passes("ap", {"positions": ["S2"]}, cfg, task.n, ["heads", "attn_out"])
    two = node_passes("ap", {"positions": ["S2", "END"]}, cfg, task.n, ["heads", "attn_out"])
    assert one == task.n * cfg.n_layers * (cfg.n_heads + 1) and two == 2 * one
    at_end = estimate_seconds(embedded_model, task, "ap", {"positions": ["END"]}, ["heads"],
                              per_pass=1.0)
    at_s2 = estimate_seconds(embedded_model, task, "ap", {"positions": ["S2"]}, ["heads"],
                             per_pass=1.0)
    assert 0 < at_end < at_s2  # S2's suffix runs to the answer, END's is the answer alone


def test_a_half_precision_model_is_timed_as_the_methods_run_it(random_model_dir, random_model,
                                                              random_task):
    """bfloat16 weights, float32 compute: the timed forward is the adapter's float32 blocks
    (what every method runs), scaled by the unembedding's share; a float32 model's own."""
    from attrscope.estimate import methods_forward

    run, scale = methods_forward(random_model, random_task.clean_tokens)
    assert run is random_model and scale == 1.0
    half = attrscope.load_model(str(random_model_dir), dtype="bfloat16")
    run, scale = methods_forward(half, random_task.clean_tokens)
    out = run(random_task.clean_tokens)
    assert out.dtype == torch.float32 and out.shape[:2] == random_task.clean_tokens.shape
    shape = ForwardShape.of(half, random_task)
    blocks = shape.n_layers * shape.block_flops
    assert scale == pytest.approx((blocks + shape.unembed_flops) / blocks)


def test_ablation_estimate_counts_the_positions_a_pass_computes(random_model, random_task):
    from attrscope.engine import first_difference
    from attrscope.estimate import ABLATION_OVERHEAD, ablation_seconds

    shape = ForwardShape.of(random_model, random_task)
    start = first_difference(random_task)
    assert start > 0

    def expected(positions):
        work = positions * shape.n_layers * shape.block_flops + shape.unembed_flops
        full = shape.positions * (shape.n_layers * shape.block_flops + shape.unembed_flops)
        return ABLATION_OVERHEAD * 10 * random_task.n * 0.5 * work / full

    other = ablation_seconds(random_model, random_task, 10, "other", 0.5)
    assert other == pytest.approx(expected(shape.positions - start))
    assert ablation_seconds(random_model, random_task, 10, "mean", 0.5) == pytest.approx(
        expected(shape.positions)) and other < expected(shape.positions)


@pytest.mark.parametrize("positions", ["each", ["S2", "END"]])
def test_exact_edges_at_positions_estimate_the_passes_the_method_runs(embedded_model, positions,
                                                                      monkeypatch):
    """``exact`` at positions runs one pass per edge, prompt and reached position ``p``, over
    positions ``p`` to the answer. The estimate's ratio to the all-positions estimate must equal
    that work counted from the passes the method really asks for (the passes themselves are
    replaced by zeros, so only what is asked is counted), against one pass per edge and
    prompt over the positions from the first clean/corrupted difference on. Not estimated: the few edges out of the input skipped where the
    tokens agree (within 10 %; before this was counted, the ratio was 1)."""
    import attrscope.edges.methods as edge_methods
    from attrscope.engine import first_difference

    task = attrscope.load_task("ioi", embedded_model, n=3)
    if positions == "each":  # one length
        task = _filler_task(embedded_model, 6)
    answer, seq = task.answer_pos.long(), task.clean_tokens.shape[1]
    counted = {"work": 0.0}

    def fake_pass(er, sets, samples=None, at=None):
        rows = torch.arange(er.n) if samples is None else samples.long().cpu()
        if at is None:  # from the first clean/corrupted difference on
            share = len(rows) * (seq - first_difference(task)) / seq
        else:
            share = ((answer[rows] + 1 - at) / (answer[rows] + 1)).sum()
        counted["work"] += len(sets) * float(share)
        return torch.zeros(len(rows), len(sets))

    monkeypatch.setattr(edge_methods, "_exact_pass", fake_pass)
    work = {}
    for setting in ("all", positions):
        counted["work"] = 0.0
        attrscope.attribute_edges(embedded_model, task, method="exact", direction="denoising",
                                  positions=setting, show_progress=False)
        work[str(setting)] = counted["work"]
    estimates = {str(s): estimate_seconds(embedded_model, task, "exact", {"positions": s}, [],
                                          per_pass=1.0, setup=False)  # the passes alone
                 for s in ("all", positions)}
    assert work["all"] > 0 and work[str(positions)] > 0
    assert estimates[str(positions)] / estimates["all"] == \
        pytest.approx(work[str(positions)] / work["all"], rel=0.1)


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@pytest.mark.parametrize("method,kinds", [("atp", ["heads", "neurons"]), ("ig", ["heads"]),
                                          ("eap", [])])
def test_setup_forwards_are_the_forwards_a_run_performs_before_its_method(
        method, kinds, random_model, random_task, embedded_model, embedded_task):
    """The fixed setup the estimate counts (:func:`setup_forwards`, in full forwards per
    prompt) equals what a call computes beyond the same call on a run whose caches are ready:
    the matrix products counted by torch's FLOP counter, in units of the model's own forward
    of the task's prompts, on two shapes."""
    from attrscope.components import KINDS
    from attrscope.edges.methods import EdgeRun
    from attrscope.engine import Runner
    from attrscope.registry import get_method

    granularity = get_method(method).granularity
    settings = {"n_steps": 2} if method == "ig" else {}
    for model, task in ((random_model, random_task), (embedded_model, embedded_task)):
        full = _flops(lambda: model(task.clean_tokens))

        def call(runner=None):
            return attrscope.attribute(model, task, method, "denoising", kinds or "heads",
                                       runner=runner, show_progress=False, **settings)

        if granularity == "edge":
            ready = EdgeRun.prepare(model, task, "denoising")
        else:
            ready = Runner(model, task, "denoising", [KINDS[k] for k in kinds])
            ready.metric_run, ready.source_acts  # noqa: B018 - the caches a run makes first
        setup = (_flops(call) - _flops(lambda: call(ready))) / full
        counted = setup_forwards(ForwardShape.of(model, task), granularity)
        assert setup > 1.5  # the run and source forwards at least
        assert counted == pytest.approx(setup, rel=0.1)


def test_compare_counts_each_runs_setup_once(embedded_model, embedded_task):
    """compare keeps one run per granularity and direction: the methods after the first of a
    granularity reuse it, so their part of the estimate has no setup."""
    from attrscope.analysis.budget import job_parts
    from attrscope.analysis.compare import CompareSettings

    plan = CompareSettings(methods=("atp", "atpstar"), directions=("denoising",))
    parts = job_parts(embedded_model, embedded_task, plan, per_pass=1.0)
    kinds = list(plan.kinds)
    assert parts["atp"] == pytest.approx(estimate_seconds(
        embedded_model, embedded_task, "atp", plan.settings_of("atp"), kinds, per_pass=1.0))
    assert parts["atpstar"] == pytest.approx(estimate_seconds(
        embedded_model, embedded_task, "atpstar", plan.settings_of("atpstar"), kinds,
        per_pass=1.0, setup=False))


def test_memory_estimate_sizes_the_largest_pass_as_the_method_does(embedded_model,
                                                                    embedded_task):
    """estimate_bytes: caches and scores from the memory plan, plus the largest pass as the
    memory model sizes it for the rows the method stacks, never more than the budget allows:
    a budget of one row bounds it; a budget that fits everything gives the unbudgeted rows."""
    from attrscope.arch.memory import PassShape, Widths, bytes_per_row
    from attrscope.components import KINDS
    from attrscope.edges.graph import Graph
    from attrscope.engine import memory_plan
    from attrscope.estimate import estimate_bytes

    model, task = embedded_model, embedded_task
    cfg, seq = model.cfg, int(task.clean_tokens.shape[1])
    plan = memory_plan(model, task.n, seq, [KINDS["heads"]])
    big = 2**40
    atp = estimate_bytes(model, task, "atp", {}, ["heads"], big)
    assert atp["caches"] == plan["caches"] and atp["scores"] == plan["scores"]
    one_row = bytes_per_row(Widths.of_config(cfg), PassShape(seq, seq, cfg.n_layers, True), 4)
    assert atp["passes"] == max(plan["forward"], task.n * one_row)  # a backward of every prompt
    ig = {s: estimate_bytes(model, task, "ig", {"n_steps": s}, ["heads"], big)["passes"]
          for s in (2, 8)}
    assert ig[8] > ig[2]  # steps x prompts stacked
    ap = estimate_bytes(model, task, "ap", {}, ["heads", "neurons"], big)["passes"]
    small = estimate_bytes(model, task, "ap", {}, ["heads", "neurons"], 1)["passes"]
    assert small < ap and small <= max(plan["forward"], bytes_per_row(
        Widths.of_config(cfg), PassShape(seq, seq, cfg.n_layers), 4))
    # atpstar keeps one gradient set per dropped layer and both prompts' q, k, v: more than atp
    dropped = estimate_bytes(model, task, "atpstar", {}, ["heads"], big)["passes"]
    undropped = estimate_bytes(model, task, "atpstar", {"graddrop": False, "qk_fix": False},
                               ["heads"], big)["passes"]
    features = seq * cfg.n_layers * cfg.n_heads * cfg.d_head * 4 * task.n
    assert dropped - undropped == (cfg.n_layers + 6) * features
    assert undropped == atp["passes"] + features
    edges = estimate_bytes(model, task, "eap-ig", {"n_steps": 4}, [], big)
    assert edges["scores"] == task.n * Graph.of_model(model).n_edges * 4
    assert edges["passes"] > estimate_bytes(model, task, "eap", {}, [], big)["passes"]


@pytest.fixture(scope="module")
def half_model(random_model_dir):
    return attrscope.load_model(str(random_model_dir), dtype="bfloat16")


def test_a_half_precision_models_timing_separates_the_fixed_cost_of_a_pass(half_model,
                                                                           random_model,
                                                                           random_task):
    """A bfloat16 model's timed forward has a fixed part per pass and the model's own forward's
    time; a float32 model's none (its estimates stay what they were)."""
    from attrscope.estimate import ForwardTime

    half = timed_forward(half_model, random_task.clean_tokens)
    assert isinstance(half, ForwardTime) and half > 0 and half.fixed >= 0 and half.own > 0
    plain = timed_forward(random_model, random_task.clean_tokens)
    assert plain.fixed == 0 and plain.own == float(plain)
    kinds = ["heads", "neurons"]
    for method, granularity in (("atp", kinds), ("eap", [])):
        assert estimate_seconds(random_model, random_task, method, {}, granularity,
                                per_pass=ForwardTime(0.5)) == pytest.approx(
            estimate_seconds(random_model, random_task, method, {}, granularity, per_pass=0.5))


@pytest.mark.parametrize("many_seconds,per_row,fixed", [
    (3.6, 0.2, 2.8),  # a clean split: 4 rows take 0.6 s more than one
    (2.9, 0.3, None),  # more rows no faster than one every time: the fallback
])
def test_a_failed_split_prices_a_row_at_the_models_own_forward(half_model, random_task,
                                                                monkeypatch, many_seconds,
                                                                per_row, fixed):
    """The split of a half-precision forward into a fixed part and each row's is timed one
    setting at a time (one prompt and four); where noise makes four rows no slower than one,
    every try, a row is priced at the model's own forward per prompt, not at the whole pass
    (the whole pass per row put screened ap at 3.7x its time on the Llama shape)."""
    from attrscope import estimate

    tokens = random_task.clean_tokens[:1]
    _, scale = estimate.methods_forward(half_model, tokens)

    def fake(fn, batch, min_seconds, max_repeats):
        if fn is half_model:
            return 0.3 * len(batch)
        return 3.0 if len(batch) == 1 else many_seconds

    monkeypatch.setattr(estimate, "_median_forward", fake)
    timing = estimate.timed_forward(half_model, tokens)
    if fixed is None:
        assert float(timing) == pytest.approx(0.3) and timing.fixed == pytest.approx(3.0 - 0.3 / scale)
    else:
        assert float(timing) == pytest.approx(scale * per_row) and timing.fixed == pytest.approx(fixed)
    assert timing.own == pytest.approx(0.3)


def _walked_blocks(model, task, method, settings, kinds, monkeypatch) -> float:
    """Blocks the method's passes run through after its setup, counted in the forward: each
    pass from where it starts (half a block from a layer's middle, none of one it leaves), a
    pass with gradients counting a backward's share too (BACKWARD_FIXED)."""
    from attrscope.arch import forward
    from attrscope.components import KINDS
    from attrscope.edges.methods import EdgeRun
    from attrscope.engine import Runner
    from attrscope.estimate import BACKWARD_FIXED

    L = model.cfg.n_layers
    walked = {"blocks": 0.0}
    real = forward._walk

    def counting(adapter, resid, plan, answer_pos):
        start = plan.start
        blocks = L - start.layer - {"pre": 0.0, "mid": 0.5, "post": 1.0}[start.stage]
        walked["blocks"] += blocks * (1 + BACKWARD_FIXED if torch.is_grad_enabled() else 1)
        return real(adapter, resid, plan, answer_pos)

    if kinds:
        ready = Runner(model, task, "denoising", [KINDS[k] for k in kinds])
        ready.metric_run, ready.source_acts  # noqa: B018 - the setup, not counted
    else:
        ready = EdgeRun.prepare(model, task, "denoising")
    monkeypatch.setattr(forward, "_walk", counting)
    attrscope.attribute(model, task, method, "denoising", kinds or "heads", runner=ready,
                        show_progress=False, **settings)
    monkeypatch.undo()
    return walked["blocks"]


@pytest.mark.parametrize("method,settings,kinds", [
    ("atp", {}, ["heads", "neurons"]),
    ("atp", {"max_batch_rows": 2}, ["heads"]),
    ("ig", {"n_steps": 4}, ["heads", "neurons"]),
    ("ig", {"n_steps": 4, "max_batch_rows": 6}, ["heads"]),
    ("ap", {}, ["heads", "neurons"]),
    ("ap", {"max_batch_rows": 7}, ["heads"]),
    ("ap", {"screen": "atp", "screen_top_k": 3, "screen_audit": 3}, ["heads", "neurons"]),
    ("eap", {}, []),
    ("eap-ig", {"n_steps": 3, "max_batch_rows": 4}, []),
    ("exact", {}, []),
    ("exact", {"max_batch_rows": 6}, []),
    ("eap-ig-act", {"n_steps": 2}, []),
    ("eap-ig-act", {"n_steps": 2, "max_batch_rows": 3, "definition": "eap-ig"}, []),
])
def test_fixed_cost_counts_the_blocks_each_batched_pass_runs(half_model, random_task, method,
                                                             settings, kinds, monkeypatch):
    """A half-precision model pays a fixed cost per block of every batched pass (its matrices
    cast as they are read), whatever the pass's rows. The blocks the estimate counts for it
    (:func:`fixed_layer_passes`) equal those the run's passes walk, counted in the forward, as
    the method batches its rows (a small max_batch_rows: more passes): exactly, but for screened
    ap, whose chosen units' layers are not known before the screen (their mean depth counts)."""
    from attrscope.estimate import fixed_layer_passes
    from attrscope.registry import get_method

    resolved = {**get_method(method).defaults, **settings}
    counted = _walked_blocks(half_model, random_task, method, settings, kinds, monkeypatch)
    estimated = fixed_layer_passes(half_model, random_task, method, resolved, kinds)
    assert counted > 0
    assert estimated == pytest.approx(counted, rel=0.25 if settings.get("screen") else 1e-6)


def test_a_fixed_cost_per_pass_makes_stacked_sets_cheaper_than_as_many_passes(
        half_model, random_task, monkeypatch):
    """The verification's estimate pays a fixed cost per batched pass of ablated sets, not per
    set: k sets cost less than k times one set, and the passes it counts are those the Ablator
    makes (its blocks of sets, counted by its passes)."""
    from attrscope.analysis import ablation
    from attrscope.analysis.ablation import Ablator
    from attrscope.analysis.verify import null_sets
    from attrscope.engine import first_difference
    from attrscope.estimate import (ABLATOR_BLOCK, ABLATOR_ROWS, ForwardTime, ablation_passes,
                                    ablation_seconds)

    assert ABLATOR_BLOCK == ablation.ABLATION_CHUNK
    assert ABLATOR_ROWS == inspect_default(Ablator.__init__, "max_batch_rows")
    timing = ForwardTime(0.01, fixed=1.0)
    one = ablation_seconds(half_model, random_task, 1, "other", timing)
    many = ablation_seconds(half_model, random_task, 150, "other", timing)
    assert one < many < 150 * one
    plain = ablation_seconds(half_model, random_task, 150, "other", 0.01)
    assert many - plain == pytest.approx(1.0 * ablation_passes(
        half_model, random_task, 150, random_task.clean_tokens.shape[1]
        - first_difference(random_task)))
    ablator = Ablator(half_model, random_task, how="other", run="clean", kinds=["heads"])
    ablator.base  # noqa: B018 - the unablated run: not one of the sets' passes
    passes = {"n": 0}
    real = ablator._ablated_metric

    def counting(chunk):
        passes["n"] += 1
        return real(chunk)

    monkeypatch.setattr(ablator, "_ablated_metric", counting)
    sets, _ = null_sets("heads", half_model.cfg, 2, 150, 0)
    ablator.metrics(sets)
    positions = random_task.clean_tokens.shape[1] - first_difference(random_task)
    assert passes["n"] == ablation_passes(half_model, random_task, len(sets), positions) > 1


def inspect_default(fn, name: str):
    import inspect

    return inspect.signature(fn).parameters[name].default


def test_the_first_calls_fused_matrices_are_counted_until_made(random_model_dir, random_task):
    """A float32 model's block adapter makes its q/k/v matrices side by side on first use and
    keeps them: the memory estimate counts their bytes (those the adapter then holds) until
    they are made, and not again."""
    from attrscope import arch
    from attrscope.estimate import fused_bytes

    model = attrscope.load_model(str(random_model_dir))  # a fresh model: nothing made yet
    task = attrscope.load_task("ioi", model, n=2, seed=3)
    before = fused_bytes(model)
    assert before > 0
    assert estimate_bytes_of(model, task)["fused"] == before
    attrscope.attribute(model, task, "atp", "denoising", "heads", show_progress=False)
    kept = arch.adapter_for(model)._fused
    assert sum(t.numel() * t.element_size() for pair in kept.values() for t in pair) == before
    assert fused_bytes(model) == 0 and estimate_bytes_of(model, task)["fused"] == 0


def estimate_bytes_of(model, task) -> dict:
    from attrscope.estimate import estimate_bytes

    return estimate_bytes(model, task, "atp", {}, ["heads"], 2**30)
