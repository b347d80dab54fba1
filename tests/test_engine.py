"""Engine: hooks never outlive a run, and the shortcut forward equals the full forward."""

import pytest
import torch

import attrscope
from attrscope import HEADS, NEURONS
from attrscope.engine import Runner


def attached_hooks(model) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def test_hooks_are_removed_after_an_exception_inside_a_run(random_model, random_task):
    runner = Runner(random_model, random_task, "denoising", [HEADS])
    before = attached_hooks(random_model)

    def boom(act, hook):
        raise RuntimeError("boom inside a hook")

    with pytest.raises(RuntimeError, match="boom inside a hook"):
        runner.metric_from_layer(1, 2, [(HEADS.hook_name(1), boom)])
    assert attached_hooks(random_model) == before == 0
    # and the model still gives unpatched results
    with torch.no_grad():
        again = random_task.metric(random_model(runner.run_tokens))
    torch.testing.assert_close(again, runner.metric_run, atol=1e-5, rtol=0)


def test_method_failure_inside_a_hooked_forward_leaves_no_hooks(random_model, random_task, monkeypatch):
    from attrscope import engine

    runner = Runner(random_model, random_task, "noising", [HEADS], allow_fast=False)
    # a patch of the wrong shape makes the model fail inside the hooked forward pass
    monkeypatch.setattr(engine, "patched_copies", lambda run, source, units: torch.zeros(1, 1, 1, 1))
    with pytest.raises(Exception):
        attrscope.attribute(random_model, random_task, "ap", "noising", "heads",
                            show_progress=False, runner=runner)
    assert attached_hooks(random_model) == 0


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_restarting_at_a_layer_equals_the_full_forward(random_model, random_task, direction):
    runner = Runner(random_model, random_task, direction, [HEADS, NEURONS])
    run = runner.run_tokens
    with torch.no_grad():
        full = random_task.metric(random_model(run))
        for layer in range(random_model.cfg.n_layers):
            torch.testing.assert_close(runner.metric_from_layer(layer, 3, []), full.repeat(3),
                                       atol=1e-5, rtol=0)
    source = runner.source_tokens
    with torch.no_grad():
        torch.testing.assert_close(runner.metric_source, random_task.metric(random_model(source)),
                                   atol=1e-5, rtol=0)


def test_unknown_settings_methods_and_directions_are_refused(random_model, random_task):
    with pytest.raises(ValueError, match=r"no setting\(s\) \['n_step'\]"):
        attrscope.attribute(random_model, random_task, "ig", "noising", n_step=3)
    with pytest.raises(ValueError, match="Unknown method 'eapp'"):
        attrscope.attribute(random_model, random_task, "eapp", "noising")
    with pytest.raises(ValueError, match="denoising"):
        attrscope.attribute(random_model, random_task, "ap", "clean_to_corrupt")
    with pytest.raises(ValueError, match="Unknown component kind"):
        attrscope.attribute(random_model, random_task, "ap", "noising", "edges")


def test_result_records_what_produced_it(random_model, random_task):
    scores = attrscope.attribute(random_model, random_task, "ig", "noising", "heads", n_steps=3,
                                 show_progress=False)
    meta = scores.meta
    assert meta["method"] == "ig" and meta["direction"] == "noising"
    assert meta["settings"]["n_steps"] == 3 and meta["settings"]["baseline"] == "matched"
    assert meta["task"]["name"] == "ioi" and meta["task"]["n"] == random_task.n
    assert meta["model_config"]["n_layers"] == 3 and "clean" in meta["sign_convention"]
    assert meta["versions"]["attrscope"] == attrscope.__version__
    assert scores["heads"].shape == (random_task.n, 3, 4)


# -- memory budget ----------------------------------------------------------------------------
def test_memory_sizes_are_parsed_and_bad_ones_refused():
    from attrscope.engine import parse_memory

    assert parse_memory("4GB") == 4 * 10**9
    assert parse_memory("512 MiB") == 512 * 2**20
    assert parse_memory("1.5gib") == int(1.5 * 2**30)
    assert parse_memory(123456) == 123456
    for bad in ("lots", "4XB", "-1GB", 0, "GB", True):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)


def test_default_budget_is_a_fraction_of_the_free_memory():
    """At most CPU_MEMORY_CAP on the CPU (tests/test_memory_plan.py checks the cap itself)."""
    from attrscope.engine import (CPU_MEMORY_CAP, DEFAULT_MEMORY_FRACTION, available_memory,
                                  default_memory_budget)

    cpu = torch.device("cpu")
    free = available_memory(cpu)
    assert free > 0
    budget = default_memory_budget(cpu)
    expected = min(DEFAULT_MEMORY_FRACTION * free, CPU_MEMORY_CAP)
    assert 0 < budget <= min(free, CPU_MEMORY_CAP) and abs(budget - expected) < 0.2 * free


class PassRecorder:
    """Wraps the fast path's run: records (rows, positions, start) of every pass."""

    def __init__(self, fast):
        self.fast, self.passes, self.original = fast, [], fast.run

        def run(layer, stage, resid, rows, start, *rest):
            self.passes.append((resid.shape[0], resid.shape[1], start))
            return self.original(layer, stage, resid, rows, start, *rest)

        fast.run = run


def test_a_small_memory_budget_bounds_every_patching_pass(random_model):
    from attrscope.arch.memory import PassShape, Widths, bytes_per_row

    task = attrscope.load_task("ioi", random_model, n=24, seed=11)
    cfg = random_model.cfg
    reference = attrscope.attribute(random_model, task, "ap", "denoising", show_progress=False,
                                    max_batch_rows=10**6)
    runner = Runner(random_model, task, "denoising", [HEADS, NEURONS])
    recorder = PassRecorder(runner.fast)
    group = max(len(g) for g in runner.sample_groups())
    widest = max(runner.span(g)[1] - runner.span(g)[0] for g in runner.sample_groups())
    # room for about 5 copies of the largest group: neurons (96 a layer) need many passes
    widths = Widths.of_config(cfg)
    keys = max(runner.span(g)[1] for g in runner.sample_groups())
    budget = 5 * group * bytes_per_row(widths, PassShape(widest, keys, cfg.n_layers), 4)
    scores = attrscope.attribute(random_model, task, "ap", "denoising", show_progress=False,
                                 runner=runner, max_memory=budget)
    assert scores.meta["settings"]["max_memory"] == budget
    assert recorder.passes
    for rows, positions, start in recorder.passes:
        assert rows * bytes_per_row(widths, PassShape(positions, start + positions, cfg.n_layers),
                                    4) <= budget
    assert max(rows for rows, _, _ in recorder.passes) > group  # copies are still stacked
    n_groups = len(runner.sample_groups())
    assert len(recorder.passes) > 2 * cfg.n_layers * n_groups  # more than one pass a layer and group
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(scores[kind], reference[kind], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["ig", "atp"])
def test_results_do_not_depend_on_the_memory_budget(random_model, random_task, method):
    settings = {"n_steps": 6} if method == "ig" else {}
    roomy = attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                                max_memory="4GB", **settings)
    from attrscope.checks import smallest_budget

    runner = Runner(random_model, random_task, "noising", [HEADS, NEURONS])
    # the smallest budget accepted (a smaller one is refused): about one row per pass
    least = smallest_budget(random_model, int(random_task.clean_tokens.shape[1]), edge=False)
    tight = attrscope.attribute(random_model, random_task, method, "noising", show_progress=False,
                                max_memory=least, runner=runner, **settings)
    assert runner.rows_per_pass({"max_memory": 1}) == 1
    for kind in ("heads", "neurons"):
        torch.testing.assert_close(tight[kind], roomy[kind], atol=1e-5, rtol=0)


def test_max_batch_rows_overrides_the_memory_budget(random_model, random_task):
    runner = Runner(random_model, random_task, "denoising", [HEADS, NEURONS])
    assert runner.rows_per_pass({"max_memory": 1, "max_batch_rows": 7}) == 7
    assert runner.rows_per_pass({"max_memory": 10**12, "max_batch_rows": 7}) == 7
    recorder = PassRecorder(runner.fast)
    attrscope.attribute(random_model, random_task, "ap", "denoising", "neurons", runner=runner,
                        show_progress=False, max_memory=10**12, max_batch_rows=7)
    # whole copies of a sample group, as many as fit in 7 rows
    fits = max((7 // len(g)) * len(g) for g in runner.sample_groups())
    assert max(rows for rows, _, _ in recorder.passes) == fits and fits <= 7
    with pytest.raises(ValueError, match="max_batch_rows must be a positive integer"):
        attrscope.attribute(random_model, random_task, "ap", "denoising", max_batch_rows=0)
    with pytest.raises(ValueError, match="max_memory"):
        attrscope.attribute(random_model, random_task, "ap", "denoising", max_memory="lots")


def test_a_tighter_budget_means_fewer_rows(random_model, random_task):
    runner = Runner(random_model, random_task, "denoising", [HEADS, NEURONS])
    rows = [runner.rows_per_pass({"max_memory": b}) for b in (10**6, 10**7, 10**8)]
    assert rows[0] < rows[1] < rows[2]
    # a backward pass keeps every downstream block's activations: fewer rows than a forward
    assert runner.rows_per_pass({"max_memory": 10**8}, 0, backward=True) < rows[2]


def test_compute_dtype_and_cache_device_are_passed_not_stored_on_the_model(random_model, random_task):
    from attrscope import arch

    hf = arch.hf_model(random_model)
    runner = Runner(random_model, random_task, "denoising", [HEADS], cache_device="cpu",
                    compute_dtype=torch.float64)
    assert runner.fast.adapter.dtype == torch.float64 and runner.metric_run.dtype == torch.float64
    assert arch.compute_dtype(random_model) == torch.float32  # the explicit choice stays in the run
    arch.set_compute_dtype(random_model, torch.float64)
    arch.set_cache_device(random_model, "cpu")
    try:
        assert arch.compute_dtype(random_model) == torch.float64
        assert arch.cache_device(random_model) == torch.device("cpu")
        assert not [name for name in vars(hf) if "attrscope" in name]  # nothing on the user's module
    finally:
        arch.set_compute_dtype(random_model, None)
        arch.set_cache_device(random_model, None)
    assert arch.compute_dtype(random_model) == torch.float32


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_the_self_check_catches_a_fault_with_cached_keys_in_any_kind_of_layer(family, tmp_path,
                                                                             monkeypatch):
    """The self-check runs the suffix forward once, from the earliest layer that is the last of
    its kind (sliding window, rotary): a fault in attention over cached keys and values of one
    kind's layers (Gemma-2 alternates local and global ones) makes it refuse the fast path."""
    from attrscope.arch import adapter_for
    from attrscope.arch.core import BlockAdapter
    from attrscope.engine import suffix_check_layer
    from families import build

    build(family, tmp_path)
    model = attrscope.load_model(str(tmp_path))
    task = attrscope.load_task("ioi", model, n=3, seed=0)
    adapter = adapter_for(model)
    kind = lambda layer: (adapter.window[layer], id(adapter.rotary[layer]))  # noqa: E731
    kinds = {kind(layer) for layer in range(adapter.n_layers)}
    start = suffix_check_layer(adapter)
    assert {kind(layer) for layer in range(start, adapter.n_layers)} == kinds
    assert start == (adapter.n_layers - 1 if len(kinds) == 1 else 1)
    attend = BlockAdapter.attend
    for faulty in kinds:
        def wrong(self, layer, q, k, v, q_pos, faulty=faulty):
            z = attend(self, layer, q, k, v, q_pos)
            # only where queries read keys of earlier positions than their own (a suffix run)
            return z + 1.0 if kind(layer) == faulty and k.shape[2] > q.shape[2] else z

        monkeypatch.setattr(BlockAdapter, "attend", wrong)
        runner = Runner(model, task, "denoising", [HEADS])
        assert runner.fast is None and "suffix from layer" in runner.fast_unavailable
        monkeypatch.setattr(BlockAdapter, "attend", attend)
    assert Runner(model, task, "denoising", [HEADS]).fast is not None


def _work(groups, starts, ends, overhead=0.0):
    return sum(len(g) * (max(ends[i] for i in g) - min(starts[i] for i in g)) + overhead
               for g in groups)


def _partitions(items, k):
    """Every split of ``items`` (a list) into at most ``k`` contiguous runs."""
    if len(items) == 0:
        yield []
        return
    if k == 0:
        return
    for cut in range(1, len(items) + 1):
        for rest in _partitions(items[cut:], k - 1):
            yield [items[:cut]] + rest


@pytest.mark.parametrize("min_size,max_groups,overhead", [
    (1, 3, 0.0), (2, 3, 0.0), (3, 2, 0.0), (1, 1, 0.0), (4, 4, 0.0), (1, 4, 3.5), (1, 8, 12.0),
    (2, 3, 1.0)])
def test_sample_groups_compute_the_fewest_positions_of_any_split(min_size, max_groups, overhead):
    """The grouping rule against every contiguous split of the samples in span order: each
    sample in exactly one group, the limits held, and no split computes fewer positions, each
    group counted ``overhead`` positions more (a pass's fixed cost)."""
    from attrscope.engine import sample_groups

    gen = torch.Generator().manual_seed(min_size * 10 + max_groups + int(overhead))
    for _ in range(20):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        starts = torch.randint(0, 12, (n,), generator=gen)
        ends = starts + torch.randint(1, 8, (n,), generator=gen)
        groups = [g.tolist() for g in sample_groups(starts, ends, min_size, max_groups,
                                                    overhead)]
        s, e = starts.tolist(), ends.tolist()
        assert sorted(i for g in groups for i in g) == list(range(n))
        if n >= min_size:
            assert len(groups) <= max_groups and min(map(len, groups)) >= min_size
        else:
            assert len(groups) == 1
        order = sorted(range(n), key=lambda i: (s[i], e[i], i))
        allowed = [p for p in _partitions(order, max_groups)
                   if min(map(len, p)) >= min_size] or [[order]]
        assert _work(groups, s, e, overhead) == pytest.approx(
            min(_work(p, s, e, overhead) for p in allowed))
