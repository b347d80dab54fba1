"""Resumable runs: chunk checkpoints of the long methods (attrscope.checkpoint).

The oracle of a resumed run is the uninterrupted run of the same call: the result must be
bit-identical (torch.equal, NaN-aware), and only the chunks the interrupted run had not finished
may be computed again.
"""

from __future__ import annotations

import pytest
import torch

import attrscope
from attrscope.checkpoint import Checkpoint, CorruptChunkWarning, kept_in, reuse_or_compute
from attrscope.engine import Runner
from attrscope.components import KINDS


class Interrupted(Exception):
    """Stands for a Ctrl-C in the middle of a method."""


def same(a: attrscope.Scores, b: attrscope.Scores) -> bool:
    """Bit-identical values and extras (NaN equal to NaN)."""
    if sorted(a.values) != sorted(b.values) or sorted(a.extras) != sorted(b.extras):
        return False
    pairs = [(a.values[k], b.values[k]) for k in a.values]
    pairs += [(a.extras[k], b.extras[k]) for k in a.extras]
    return all(x.dtype == y.dtype and torch.equal(torch.nan_to_num(x, nan=7.25),
                                                  torch.nan_to_num(y, nan=7.25))
               for x, y in pairs)


def test_chunks_round_trip_and_refuse_corrupt_or_foreign_files(tmp_path):
    cp = Checkpoint(tmp_path / "parts", "key-a")
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).view(2, 3)}

    first = cp.chunk("heads.layer0", compute)
    again = cp.chunk("heads.layer0", compute)
    assert torch.equal(first["x"], again["x"]) and len(calls) == 1
    assert (cp.reused, cp.computed, cp.stored()) == (1, 1, 1)

    # the same folder under another key: never used
    other = Checkpoint(tmp_path / "parts", "key-b")
    with pytest.warns(CorruptChunkWarning, match="another computation"):
        assert other.get("heads.layer0") is None

    # flipped bytes at full size: refused, recomputed, named
    path = cp.path("heads.layer0")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(CorruptChunkWarning, match="heads.layer0"):
        assert torch.equal(cp.chunk("heads.layer0", compute)["x"], first["x"])
    assert len(calls) == 2

    # truncated: the same
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(CorruptChunkWarning, match="heads.layer0"):
        cp.chunk("heads.layer0", compute)
    assert len(calls) == 3
    cp.discard()
    assert not (tmp_path / "parts").exists()


def _interrupt_after(monkeypatch, target, name: str, calls: int) -> None:
    """Make ``target.name`` raise Interrupted on its ``calls + 1``-th call."""
    original = getattr(target, name)
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupted
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.parametrize("method, settings, pass_name", [
    ("ap", {"max_batch_rows": 16}, "metric_with_units_patched"),
    ("ig", {"n_steps": 4, "max_batch_rows": 16}, "metric_with_activation"),
])
def test_node_method_resumes_bit_identical(random_model, random_task, tmp_path, monkeypatch,
                                           method, settings, pass_name):
    kinds = ["heads", "neurons"]
    reference = attrscope.attribute(random_model, random_task, method, "denoising", kinds,
                                    show_progress=False, **settings)
    folder = tmp_path / "parts"
    runner = Runner(random_model, random_task, "denoising", [KINDS[k] for k in kinds])
    # interrupt in the middle of the fourth (kind, layer) chunk of six
    passes_per_chunk = _passes_per_chunk(random_model, random_task, method, settings, runner)
    with monkeypatch.context() as m:
        _interrupt_after(m, Runner, pass_name, 3 * passes_per_chunk + 1)
        with pytest.raises(Interrupted):
            attrscope.attribute(random_model, random_task, method, "denoising", kinds,
                                show_progress=False, runner=runner, checkpoint=folder, **settings)
    assert len(list(folder.glob("*.safetensors"))) == 3
    cp = Checkpoint(folder, _key(random_model, random_task, method, kinds, settings))
    resumed = attrscope.attribute(random_model, random_task, method, "denoising", kinds,
                                  show_progress=False, runner=runner, checkpoint=cp, **settings)
    assert (cp.reused, cp.computed) == (3, 3)  # only the unfinished chunks were computed
    assert same(resumed, reference)
    assert runner.checkpoint.computed == 0  # the runner keeps no checkpoint after the call


def _passes_per_chunk(model, task, method, settings, runner) -> int:
    """How many calls of the patched forward one (kind, layer) chunk makes (the same for
    every chunk of this model: rows per pass fixed by max_batch_rows)."""
    counter = {"n": 0}
    original = {"ap": Runner.metric_with_units_patched, "ig": Runner.metric_with_activation}[method]

    def counting(*args, **kwargs):
        counter["n"] += 1
        return original(*args, **kwargs)

    name = original.__name__
    setattr(Runner, name, counting)
    try:
        attrscope.attribute(model, task, method, "denoising", ["heads"], show_progress=False,
                            runner=runner, **settings)
    finally:
        setattr(Runner, name, original)
    per_chunk = counter["n"] // int(model.cfg.n_layers)
    assert per_chunk * int(model.cfg.n_layers) == counter["n"]
    return per_chunk


def _key(model, task, method, kinds, settings):
    from attrscope.api import attribution_key, normalise_settings
    from attrscope.methods import METHODS

    resolved = {**METHODS[method].defaults, **settings}
    kind_objs = [KINDS[k] for k in kinds]
    normalise_settings(resolved, kind_objs, model)
    return attribution_key(model, task, method, "denoising", kind_objs, resolved)


def test_exact_edges_resume_bit_identical(random_model, random_task, tmp_path, monkeypatch):
    from attrscope.edges import methods as edge_methods

    monkeypatch.setattr(edge_methods, "EXACT_CHUNK", 40)
    reference = attrscope.attribute(random_model, random_task, "exact", "noising",
                                     show_progress=False, max_batch_rows=64)
    n_edges = reference["edges"].shape[-1]
    n_chunks = -(-n_edges // 40)
    assert n_chunks >= 3
    folder = tmp_path / "edge-parts"
    per_chunk = -(-40 // max(1, 64 // random_task.n))
    with monkeypatch.context() as m:
        _interrupt_after(m, edge_methods, "_exact_pass", 2 * per_chunk)
        with pytest.raises(Interrupted):
            attrscope.attribute(random_model, random_task, "exact", "noising", show_progress=False,
                                checkpoint=folder, max_batch_rows=64)
    assert len(list(folder.glob("*.safetensors"))) == 2
    resumed = attrscope.attribute(random_model, random_task, "exact", "noising",
                                  show_progress=False, checkpoint=folder, max_batch_rows=64)
    assert same(resumed, reference)


def test_reuse_or_compute_resumes_and_cleans_up(random_model, random_task, tmp_path):
    path = tmp_path / "results" / "ap.safetensors"
    lines = []

    def compute(checkpoint):
        return attrscope.attribute(random_model, random_task, "ap", "noising", ["heads"],
                                   show_progress=False, checkpoint=checkpoint)

    # a run that stopped after storing one chunk
    Checkpoint(path.with_suffix(".parts"), "k").put("heads.layer0", {"scores": torch.full(
        (random_task.n, int(random_model.cfg.n_heads)), 0.5)})
    scores, reused = reuse_or_compute(path, "k", compute, lines.append, "ap noising")
    assert not reused and path.is_file() and not path.with_suffix(".parts").exists()
    assert torch.all(scores["heads"][:, 0] == 0.5)  # the stored chunk was used, not recomputed
    assert any("resuming" in line and "1 finished chunk" in line for line in lines)
    assert any("1 chunk(s) resumed, 2 computed" in line for line in lines)
    again, reused = reuse_or_compute(path, "k", compute, lines.append, "ap noising")
    assert reused and same(again, scores)
    assert kept_in(tmp_path) == (1, 0)


def test_path_survey_resumes_from_its_finished_layers(random_model, random_task, tmp_path,
                                                      monkeypatch):
    from attrscope.analysis import path

    SURVEY = path.SurveySettings(n_steps=3, max_batch_rows=40)
    reference = path.survey(random_model, random_task, "noising", "heads", SURVEY)
    folder = tmp_path / "survey.parts"
    with monkeypatch.context() as m:
        _interrupt_after(m, path, "unit_path_tensors", 1)  # in the second layer of paths
        with pytest.raises(Interrupted):
            path.survey(random_model, random_task, "noising", "heads", SURVEY,
                        checkpoint=Checkpoint(folder, "k"))
    checkpoint = Checkpoint(folder, "k")
    resumed = path.survey(random_model, random_task, "noising", "heads", SURVEY,
                          checkpoint=checkpoint)
    # 3 ap layers and the first layer of paths were kept; 2 layers of paths computed
    assert (checkpoint.reused, checkpoint.computed) == (4, 2)
    assert resumed.rows == reference.rows and resumed.correlations == reference.correlations
    assert torch.equal(resumed.ap, reference.ap)


def test_compare_resumes_its_ablation_sweep(random_model, random_task, tmp_path, monkeypatch):
    from attrscope.analysis import ablation
    from attrscope.analysis.compare import compare

    options = dict(methods=("ap", "atp"), directions=("denoising", "noising"), kinds=("heads",),
                   k=3, n_boot=50, n_random=20, seed=1,
                   method_settings={}, show_progress=False, log=lambda line: None)
    monkeypatch.setattr(ablation, "ABLATION_CHUNK", 8)
    reference = compare(random_model, random_task, cache_dir=tmp_path / "ref", **options)
    cache = tmp_path / "results"
    with monkeypatch.context() as m:
        _interrupt_after(m, ablation.Ablator, "_evaluate", 3)  # after three blocks of sets
        with pytest.raises(Interrupted):
            compare(random_model, random_task, cache_dir=cache, **options)
    assert [len(list(p.glob("*.safetensors"))) for p in cache.glob("ablations-*.parts")] == [3]
    lines = []
    resumed = compare(random_model, random_task, cache_dir=cache, **{**options, "log": lines.append})
    assert any("resuming from 3 finished block(s)" in line for line in lines)
    # repr: exact floats, and NaN (a p-value with no spread) equal to NaN
    assert repr(resumed.verification) == repr(reference.verification)
    assert resumed.faithfulness.keys() == reference.faithfulness.keys()
    for key, curve in reference.faithfulness.items():
        assert str(resumed.faithfulness[key]) == str(curve)
    assert not list(cache.glob("ablations-*.parts"))  # removed once the comparison is done


def test_a_second_run_waits_for_the_lock_then_reuses_the_result(random_model, random_task,
                                                                 tmp_path):
    import threading

    from attrscope.checkpoint import lock_path, waiting_lock

    path = tmp_path / "results" / "atp.safetensors"
    result = attrscope.attribute(random_model, random_task, "atp", "noising", ["heads"],
                                 show_progress=False)
    result.meta["cache_key"] = "k"
    holding, release = threading.Event(), threading.Event()

    def first_run():  # holds the lock while it "computes", then saves the result
        with waiting_lock(lock_path(path), print, "atp noising"):
            holding.set()
            release.wait(30)
            result.save(path)

    thread = threading.Thread(target=first_run)
    thread.start()
    holding.wait(30)
    lines = []
    timer = threading.Timer(0.5, release.set)
    timer.start()

    def must_not_compute(checkpoint):
        raise AssertionError("the second run computed the result instead of waiting")

    try:
        again, reused = reuse_or_compute(path, "k", must_not_compute, lines.append, "atp noising")
    finally:
        release.set()
        thread.join()
    assert reused and same(again, result)
    assert any(line.startswith("waiting for another attrscope run that is computing atp noising")
               for line in lines)
    assert sorted(p.name for p in path.parent.iterdir()) == [".locks", "atp.safetensors"]


def test_no_checkpoint_answers_every_call_a_checkpoint_does():
    from attrscope.checkpoint import NO_CHECKPOINT

    public = [name for name in vars(Checkpoint) if not name.startswith("_") and name != "path"]
    assert sorted(public) == ["chunk", "discard", "get", "put", "stored"]
    for name in public:
        assert callable(getattr(NO_CHECKPOINT, name)), name
    NO_CHECKPOINT.put("x", {"a": torch.ones(1)})
    assert NO_CHECKPOINT.get("x") is None and NO_CHECKPOINT.stored() == 0
    assert NO_CHECKPOINT.chunk("x", lambda: {"a": torch.ones(1)})["a"].item() == 1
    assert (NO_CHECKPOINT.reused, NO_CHECKPOINT.computed) == (0, 0)


def test_sigterm_is_raised_like_ctrl_c_inside_the_block_only():
    import os
    import signal

    from attrscope.checkpoint import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as raised:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**6):  # the handler runs between bytecodes, at once
                pass
    assert isinstance(raised.value, Terminated)
    assert signal.getsignal(signal.SIGTERM) is before
