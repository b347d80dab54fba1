"""The task-suite training script is deterministic given its seed (a 20-step run, twice)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _start(out: Path, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train_task_model.py"), "--seed", str(seed),
         "--out", str(out), "--max-steps", "20", "--warmup", "5", "--threads", "1",
         "--no-bridge-check"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_together(runs: list[tuple[Path, int]]) -> None:
    """The single-threaded runs side by side (they share nothing but the CPU)."""
    procs = [_start(out, seed) for out, seed in runs]
    for proc in procs:
        output, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, output[-6000:]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_script_is_deterministic_given_the_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _run_together([(a, 3), (b, 3), (c, 4)])
    assert _digest(a / "model.safetensors") == _digest(b / "model.safetensors")
    assert _digest(a / "tokenizer.json") == _digest(b / "tokenizer.json")
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")
    ra, rb = (json.loads((d / "training.json").read_text()) for d in (a, b))
    assert ra["steps"] == rb["steps"] == 20
    assert ra["heldout_eval"] == rb["heldout_eval"]
    assert set(ra["heldout_eval"]["tasks"]) == {"ioi", "ioi_abc", "greater_than",
                                                 "capital_country", "gender", "sva", "hypernymy"}
