"""Task registry and loaders: ``load_task("ioi", model)`` or ``load_task("pairs.csv", model)``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from .base import PromptPair, Task, TaskDataError, build_task

DEFAULT_N = 50
REQUIRED_COLUMNS = ("clean", "corrupted", "answer", "distractor")


def _ioi_pairs(n: int, seed: int, split: str = "all") -> list[PromptPair]:
    from .ioi_data import generate_ioi_pairs

    return [
        PromptPair(r["clean"], r["corrupted"], r["answer"], r["distractor"])
        for r in generate_ioi_pairs(n, seed=seed, split=split)
    ]


# name -> (generator of n pairs given a seed, one-line description)
GENERATED_TASKS: dict[str, tuple[Callable[..., list[PromptPair]], str]] = {
    "ioi": (
        _ioi_pairs,
        "indirect object identification: 'When John and Mary went to the store, John gave a "
        "bottle of milk to' -> ' Mary'; corrupted by replacing the second subject mention with "
        "the indirect object, so the answer flips; metric: logit(answer) - logit(distractor)",
    ),
}


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    elif suffix in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}: line {i} is not valid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise TaskDataError(f"{path}: line {i} is not a JSON object.")
            rows.append(obj)
        columns = sorted({k for r in rows for k in r})
    else:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .csv or .jsonl.")
    if not rows:
        raise TaskDataError(f"{path}: the file has no rows.")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise TaskDataError(
            f"{path}: missing column(s) {missing}; a task file needs columns {list(REQUIRED_COLUMNS)} "
            "(answers as strings, e.g. ' Mary' with its leading space)."
        )
    return rows


def load_task_file(path: str | Path, model, n: int | None = None,
                   skip_invalid: bool = False) -> Task:
    """Read prompt pairs from a CSV or JSONL file with columns clean, corrupted, answer,
    distractor (strings). Rows are numbered from 1 (the first data row) in error messages.

    Invalid rows are an error listing every one, unless ``skip_invalid``: then they are left
    out and listed, with their reasons, in ``task.info["skipped"]``, and ``n`` counts valid
    rows."""
    path = Path(path)
    rows = _read_rows(path)
    errors, pairs, numbers = [], [], []
    absent_values: dict[int, list[str]] = {}
    for i, row in enumerate(rows, start=1):
        absent = [c for c in REQUIRED_COLUMNS if row.get(c) is None]
        if absent:
            errors.append(f"row {i}: missing value(s) for {absent}")
            absent_values[i] = [f"missing value(s) for {absent}"]
            continue
        pairs.append(PromptPair(*(str(row[c]) for c in REQUIRED_COLUMNS)))
        numbers.append(i)
    if errors and not skip_invalid:
        raise TaskDataError(f"{path}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    if n is not None and not skip_invalid:
        if n > len(pairs):
            raise TaskDataError(f"{path}: asked for n={n} pairs but the file has {len(pairs)}.")
        pairs, numbers = pairs[:n], numbers[:n]
    task = build_task(model, pairs, name=str(path), info={"source": "file", "path": str(path)},
                      row_numbers=numbers, skip_invalid=skip_invalid, limit=n,
                      earlier_skips=absent_values)
    if n is not None and task.n < n:
        raise TaskDataError(f"{path}: asked for n={n} pairs but only {task.n} rows are valid "
                            f"({task.info['skipped']['count']} skipped).")
    return task


def load_task(name_or_file: str, model, n: int | None = None, seed: int = 0,
              skip_invalid: bool = False, **options) -> Task:
    """A task by registered name (``"ioi"``; ``n`` pairs generated from ``seed``, default
    ``DEFAULT_N``) or from a CSV/JSONL file of prompt pairs (``skip_invalid``: see
    :func:`load_task_file`)."""
    if name_or_file in GENERATED_TASKS:
        generate, _ = GENERATED_TASKS[name_or_file]
        n = DEFAULT_N if n is None else n
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        pairs = generate(n, seed, **options)
        info = {"source": "generated", "seed": seed, **options}
        return build_task(model, pairs, name=name_or_file, info=info)
    path = Path(name_or_file)
    if path.suffix.lower() in (".csv", ".jsonl", ".json") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"Task file {path} does not exist.")
        return load_task_file(path, model, n=n, skip_invalid=skip_invalid)
    raise ValueError(
        f"Unknown task {name_or_file!r}: use one of {sorted(GENERATED_TASKS)} or a .csv/.jsonl file."
    )


__all__ = ["Task", "PromptPair", "TaskDataError", "build_task", "load_task", "load_task_file",
           "GENERATED_TASKS"]
