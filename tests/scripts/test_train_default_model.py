"""The training script reproduces the shipped model's quality (about 5 minutes on 2 cores)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

import attrscope
from attrscope.models import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_training_script_reproduces_the_shipped_quality(tmp_path):
    out = tmp_path / "model"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default_model.py"),
                           "--seed", "0", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "training.json").read_text())
    shipped = json.loads((DEFAULT_MODEL_DIR / "training.json").read_text())
    assert record["hyperparameters"] == shipped["hyperparameters"]
    # Quality measured independently of the script, through attrscope's own loader and task:
    model = attrscope.load_model(str(out))
    task = attrscope.load_task("ioi", model, n=500, seed=12345, split="heldout")
    with torch.no_grad():
        clean = task.metric(model(task.clean_tokens))
    assert (clean > 0).float().mean() >= 0.98
    assert clean.mean() >= 3.0
    assert abs(clean.mean().item() - shipped["heldout_eval"]["mean_logit_diff"]) < 1.5
