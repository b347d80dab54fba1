"""Interrupted command-line runs, as a user meets them: ``kill -9`` or Ctrl-C in the middle of a
method, then the same command again.

The reference is the same command run without interruption in the same environment: the resumed
result must be bit-identical to it, and the rerun may compute only the chunks the killed run had
not finished (so at most the one in flight is lost).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attrscope import Scores
from attrscope.cli.options import indexed_results, result_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
N_CHUNKS = 6  # (heads, neurons) x 3 layers of the random model


def command(model_dir: Path, out: Path, *extra: str) -> list[str]:
    # ig with many small passes: each (kind, layer) chunk takes a noticeable time even on a fast
    # idle machine (12 steps ran the whole method in 0.1 s there, before a signal could land)
    return [sys.executable, "-m", "attrscope.cli", "attribute", "--model", str(model_dir),
            "--n", "4", "--method", "ig", "--direction", "noising", "--n-steps", "160",
            "--max-batch-rows", "4", "--out", str(out), "--no-progress", *extra]


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def start_and_stop_after_first_chunk(cmd: list[str], out: Path, sig: int) -> tuple[int, str, int]:
    """Start ``cmd``, send ``sig`` once its first chunk file exists; (exit code, output, chunk
    files present when the signal was sent)."""
    chunks = lambda: list(out.glob("results/ig-noising-*.parts/*.safetensors"))  # noqa: E731
    # A run started from a background job inherits SIGINT ignored, and Python then keeps ignoring
    # it; the user's terminal gives the command the default disposition, so the test does too.
    proc = subprocess.Popen(cmd, env=environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    try:
        while not chunks():
            if proc.poll() is not None:
                pytest.fail(f"the run ended before its first chunk: {proc.stdout.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no chunk written in 600 s")
            time.sleep(0.01)
        present = len(chunks())
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output, present


def same_tensors(a: Scores, b: Scores) -> bool:
    tensors = lambda s: {**{f"v.{k}": v for k, v in s.values.items()},  # noqa: E731
                         **{f"e.{k}": v for k, v in s.extras.items()}}
    ta, tb = tensors(a), tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_sigkill_mid_method_then_rerun_is_bit_identical(random_model_dir, tmp_path):
    reference_out, out = tmp_path / "reference", tmp_path / "killed"
    done = subprocess.run(command(random_model_dir, reference_out), env=environment(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = Scores.load(result_path(reference_out, "ig", "noising"))

    code, _, present = start_and_stop_after_first_chunk(command(random_model_dir, out), out,
                                                        signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not list(out.glob("results/*.safetensors")) and not indexed_results(out)
    kept = len(list(out.glob("results/ig-noising-*.parts/*.safetensors")))
    assert present <= kept < N_CHUNKS

    rerun = subprocess.run(command(random_model_dir, out), env=environment(),
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming the interrupted run from {kept} finished chunk(s)" in rerun.stdout
    found = re.search(r"(\d+) chunk\(s\) resumed, (\d+) computed", rerun.stdout)
    assert found, rerun.stdout
    # every finished chunk was reused: only the one in flight (and those after it) ran again
    assert (int(found[1]), int(found[2])) == (kept, N_CHUNKS - kept)
    assert same_tensors(Scores.load(result_path(out, "ig", "noising")), reference)
    assert not list(out.glob("results/*.parts"))


def test_ctrl_c_says_what_was_kept_and_how_to_resume(random_model_dir, tmp_path):
    out = tmp_path / "interrupted"
    code, output, present = start_and_stop_after_first_chunk(command(random_model_dir, out), out,
                                                             signal.SIGINT)
    assert code == 130, output
    kept = len(list(out.glob("results/ig-noising-*.parts/*.safetensors")))
    assert kept >= present
    assert (f"interrupted: 0 finished result(s) and {kept} finished chunk(s) of the interrupted "
            f"method are kept in {out}; run the same command again to resume") in output
    assert "Traceback" not in output
