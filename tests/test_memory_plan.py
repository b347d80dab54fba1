"""Memory planned before the run: the estimate against the measured peak, and refusals that come
at once (before any forward) with the estimate and the largest n that fits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
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
