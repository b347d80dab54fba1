"""Memory planned before the run: the estimate against the measured peak, and refusals that come
at once (before any forward) with the estimate and the largest n that fits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import attrscope
from attrscope import engine
from attrscope.cli import app
from attrscope.components import resolve_kinds
from attrscope.engine import MemoryPlanError, Runner, check_memory

# The measured peak is within [estimate / LOW, estimate * HIGH] (measured ratios: 0.92-1.05 on the
# embedded model for n = 500-2000, 0.53-1.0 on this small random model, where the allocator
# reuses the unbatched forward's memory for the caches).
LOW, HIGH = 2.5, 1.25
MEASURE = """
import ctypes, gc, json, os, sys, threading
import attrscope
from attrscope.components import resolve_kinds
from attrscope.engine import Runner

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

model = attrscope.load_model(sys.argv[1])
task = attrscope.load_task("ioi", model, n=int(sys.argv[2]), seed=0)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the baseline is what is live
base = rss()
peak, done = [base], threading.Event()

def sample():  # the resident set's peak during the run, every 2 ms (ru_maxrss is lifetime)
    while not done.wait(0.002):
        peak[0] = max(peak[0], rss())

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
runner = Runner(model, task, "denoising", resolve_kinds("heads,neurons"))
runner.fast, runner.source_acts
done.set()
sampler.join()
peak[0] = max(peak[0], rss())
print(json.dumps({"measured": peak[0] - base, "plan": runner.memory_plan}))
"""


def test_estimate_is_close_to_the_measured_peak(random_model_dir):
    """Caches and the unbatched forward of a node run, in a fresh process (ru_maxrss)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(random_model_dir), "600"],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    estimate = result["plan"]["caches"] + result["plan"]["forward"]
    assert estimate / LOW <= result["measured"] <= estimate * HIGH, result


def test_a_run_that_cannot_fit_is_refused_before_any_forward(random_model, random_task, monkeypatch):
    monkeypatch.setattr(engine, "available_memory", lambda device: 10**6)
    calls = []
    monkeypatch.setattr(Runner, "capture", lambda *a, **k: calls.append(a))
    with pytest.raises(MemoryPlanError, match=r"need an estimated .* GB.*Use --n \d+ or fewer"):
        attrscope.attribute(random_model, random_task, "ap", show_progress=False)
    assert not calls
    kinds = resolve_kinds("heads,neurons")
    plan = check_memory(random_model, 100, 20, kinds, available=10**12)
    assert plan["caches"] > 0 and plan["forward"] > 0 and plan["scores"] > 0
    with pytest.raises(MemoryPlanError, match="Use --n 0 or fewer"):
        check_memory(random_model, 100, 20, kinds, available=10)


def test_compare_with_a_huge_n_is_refused_at_once():
    result = CliRunner().invoke(app, ["compare", "--n", "100000", "--out", "unused"])
    assert result.exit_code == 2
    assert "100000 prompt pairs" in result.output and "Use --n" in result.output


def test_the_default_budget_is_capped_on_the_cpu_only(monkeypatch):
    """Half the free memory, at most CPU_MEMORY_CAP on the CPU (larger CPU batches are no
    faster); a GPU keeps the fraction."""
    free = 64 * engine.CPU_MEMORY_CAP
    monkeypatch.setattr(engine, "available_memory", lambda device: free)
    assert engine.default_memory_budget(torch.device("cpu")) == engine.CPU_MEMORY_CAP
    assert engine.default_memory_budget(torch.device("cuda")) == free // 2
    monkeypatch.setattr(engine, "available_memory", lambda device: engine.CPU_MEMORY_CAP)
    assert engine.default_memory_budget(torch.device("cpu")) == engine.CPU_MEMORY_CAP // 2


def test_ig_stacks_the_path_steps_the_memory_model_allows(random_model, random_task, monkeypatch):
    """Every ig pass holds the rows the one memory model allows for a backward from that layer
    over the positions it computes (whole path steps of its sample group, at least one step),
    and the chunked result is the unchunked one."""
    from attrscope.arch.memory import PassShape, Widths, bytes_per_row

    seen = []
    original = Runner.metric_with_activation

    def recording(self, kind, layer, activation, start, samples=None):
        if activation.requires_grad:
            g = self.n if samples is None else len(samples)
            seen.append((layer, activation.shape[0], g, start, start + activation.shape[1]))
        return original(self, kind, layer, activation, start, samples)

    monkeypatch.setattr(Runner, "metric_with_activation", recording)
    n, steps, cfg = random_task.n, 7, random_model.cfg
    seq = int(random_task.clean_tokens.shape[1])
    widest = bytes_per_row(Widths.of_config(cfg), PassShape(seq, seq, cfg.n_layers, backward=True), 4)
    budget = 3 * n * widest  # at least three steps per pass at every layer
    chunked = attrscope.attribute(random_model, random_task, "ig", "denoising", "heads",
                                  show_progress=False, n_steps=steps, max_memory=budget)
    assert seen
    for layer, rows, g, start, end in seen:
        allowed = budget // bytes_per_row(Widths.of_config(cfg), PassShape(
            end - start, end, cfg.n_layers - layer, backward=True), 4)
        per_pass = max(1, allowed // g)
        assert rows % g == 0 and rows <= per_pass * g
    assert max(rows // g for _, rows, g, _, _ in seen) > 1  # several steps stacked: it can fail
    passes = {}
    for layer, _, g, start, end in seen:
        passes[(layer, g, start, end)] = passes.get((layer, g, start, end), 0) + 1
    assert max(passes.values()) < steps  # and fewer passes than steps
    whole = attrscope.attribute(random_model, random_task, "ig", "denoising", "heads",
                                show_progress=False, n_steps=steps, max_batch_rows=steps * n)
    torch.testing.assert_close(chunked.values["heads"], whole.values["heads"], rtol=1e-4, atol=1e-6)


def test_eap_ig_chunks_samples_and_steps_within_the_plan(random_model, random_task, monkeypatch):
    """Every eap-ig pass holds at most the rows the memory model allows with the edge forward's
    widths, all n x steps (sample, step) rows are computed, and the result does not depend on
    the chunking."""
    from attrscope.arch.memory import PassShape, Widths, bytes_per_row
    from attrscope.edges.forward import EdgeForward
    from attrscope.edges.graph import Graph

    seen = []
    original = EdgeForward.probed

    def recording(self, resid, *args, **kwargs):
        seen.append(resid.shape[0])
        return original(self, resid, *args, **kwargs)

    monkeypatch.setattr(EdgeForward, "probed", recording)
    n, steps, seq = random_task.n, 4, int(random_task.clean_tokens.shape[1])
    widths = Widths.of_adapter(attrscope.arch.adapter_for(random_model), Graph.of_model(random_model))
    row = bytes_per_row(widths, PassShape(seq, seq, int(random_model.cfg.n_layers), True), 4)
    budget = 3 * row + row // 2  # three rows a pass: samples and steps are both split
    chunked = attrscope.attribute(random_model, random_task, "eap-ig", "denoising", "edges",
                                  show_progress=False, n_steps=steps, max_memory=budget)
    assert max(seen) == 3 and sum(seen) == n * steps
    whole = attrscope.attribute(random_model, random_task, "eap-ig", "denoising", "edges",
                                show_progress=False, n_steps=steps, max_batch_rows=n * steps)
    key = next(iter(whole.values))
    torch.testing.assert_close(chunked.values[key], whole.values[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("budget_rows", [60, 10**6])
def test_exact_passes_hold_the_rows_the_memory_model_allows(random_model, random_task,
                                                            budget_rows, monkeypatch):
    """Every exact edge pass holds whole copies of the batch, at most what the memory model
    allows for a pass without a backward over the positions from the first difference on (and
    never more than EDGE_PATCH_MAX_ROWS rows or a chunk of EXACT_CHUNK edges), every edge once;
    the result does not depend on the sizing."""
    import attrscope.edges.methods as edge_methods
    from attrscope.arch.memory import (EDGE_PATCH_MAX_ROWS, PassShape, Widths, bytes_per_row)
    from attrscope.edges.graph import Graph
    from attrscope.engine import first_difference

    seen, original = [], edge_methods._exact_pass

    def recording(er, sets, samples=None, at=None):
        seen.append([e for s in sets for e in s])
        return original(er, sets, samples, at)

    monkeypatch.setattr(edge_methods, "_exact_pass", recording)
    monkeypatch.setattr(edge_methods, "EXACT_CHUNK", 40)
    n, seq = random_task.n, int(random_task.clean_tokens.shape[1])
    graph = Graph.of_model(random_model)
    widths = Widths.of_adapter(attrscope.arch.adapter_for(random_model), graph)
    row = bytes_per_row(widths, PassShape(seq - first_difference(random_task), seq,
                                          graph.n_layers), 4)
    sized = attrscope.attribute(random_model, random_task, "exact", "denoising", "edges",
                                show_progress=False, max_memory=budget_rows * row)
    allowed = min(budget_rows, EDGE_PATCH_MAX_ROWS) // n
    assert sorted(e for edges in seen for e in edges) == list(range(graph.n_edges))
    assert max(map(len, seen)) == min(max(1, allowed), 40)
    assert all(len({e // 40 for e in edges}) == 1 for edges in seen)  # within one chunk
    one = attrscope.attribute(random_model, random_task, "exact", "denoising", "edges",
                              show_progress=False, max_batch_rows=n)
    key = next(iter(one.values))
    torch.testing.assert_close(sized.values[key], one.values[key], rtol=1e-4, atol=1e-6)
