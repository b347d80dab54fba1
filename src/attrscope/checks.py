"""Checks of a run's inputs and outputs made before the work (or before its results are used):
an output folder that can be written, a model whose outputs are finite.

Each raises a ValueError subclass whose message names the input and says what to do; the
command line turns it into one line ``error: ...`` and a non-zero exit code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch


class OutputDirError(ValueError):
    """An output location that is a file, cannot be created or cannot be written."""


class NonFiniteOutputError(ValueError):
    """A model whose unpatched metric is NaN or infinite: every score would be meaningless."""


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Check that ``path`` is a writable folder, or can be created as one (it is not created
    here). Writability is probed with a temporary file, since permission bits do not show a
    read-only file system. Returns the path; raises OutputDirError."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{option} {path} is an existing file; give a folder (it is created "
                             "if missing).")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists
        existing = existing.parent
    if not existing.is_dir():
        raise OutputDirError(f"{option} {path} cannot be created: {existing} is a file.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OutputDirError(f"{option} {path} is not writable ({e.strerror or e} in "
                             f"{existing}); choose another folder.") from None
    return path


def check_finite_metrics(runner, task) -> None:
    """Refuse a model whose metric on the task's unpatched prompts is NaN or infinite.

    runner.metric_run, runner.metric_source: ``[n]`` metrics of the run and source prompts."""
    for which, metric in (("run", runner.metric_run), ("source", runner.metric_source)):
        bad = ~torch.isfinite(metric)
        if bad.any():
            rows = [int(i) + 1 for i in bad.nonzero().flatten()[:5]]
            raise NonFiniteOutputError(
                f"the model's {task.metric_name} is NaN or infinite on {int(bad.sum())} of "
                f"{task.n} {which} prompts of task {task.name} (samples {rows}): its outputs are "
                "not finite (NaN/Inf weights, or an overflow in this dtype); check the model's "
                "weights or use --dtype float32.")
