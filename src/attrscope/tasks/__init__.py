"""Task registry and loaders: ``load_task("ioi", model)`` or ``load_task("pairs.csv", model)``."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..models import as_bridge
from .base import PromptPair, Task, TaskDataError, build_task, problem_list
from .metrics import METRICS, MetricError, check_metric

DEFAULT_N = 50
REQUIRED_COLUMNS = ("clean", "corrupted", "answer", "distractor")


@dataclass(frozen=True)
class TaskSpec:
    """A generated task: ``module.function(n, seed=, split=, **options)`` returns rows (dicts
    with clean, corrupted, answer, distractor: strings, or lists of strings for set metrics;
    and ``positions``, the clean prompt's named positions, see :mod:`.positions`).
    ``metric`` and ``description`` default to the module's ``METRIC`` and ``DESCRIPTION``."""

    module: str
    function: str
    model: str | None = None  # the embedded model that performs it (None: the default IOI one)
    options: tuple[tuple[str, Any], ...] = ()
    metric_name: str | None = None
    description_text: str | None = None

    def _module(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    @property
    def metric(self) -> str:
        return self.metric_name or self._module().METRIC

    @property
    def description(self) -> str:
        return self.description_text or self._module().DESCRIPTION

    def generate(self, n: int, seed: int, split: str = "all", **options) -> list[PromptPair]:
        rows = getattr(self._module(), self.function)(n, seed=seed, split=split,
                                                      **{**dict(self.options), **options})
        return [PromptPair(r["clean"], r["corrupted"], r["answer"], r["distractor"],
                           r.get("positions")) for r in rows]


TASK_MODEL = "attrscope-tasks"
GENERATED_TASKS: dict[str, TaskSpec] = {
    "ioi": TaskSpec(
        "ioi_data", "generate_ioi_pairs", metric_name="logit_diff", description_text=(
            "indirect object identification: 'When John and Mary went to the store, John gave a "
            "bottle of milk to' -> ' Mary'; corrupted ('flip') by replacing the second subject "
            "mention with the indirect object, so the answer flips")),
    "ioi-abc": TaskSpec(
        "ioi_data", "generate_ioi_pairs", options=(("corruption", "abc"),),
        metric_name="logit_diff", description_text=(
            "IOI with the 'abc' corruption: all three name mentions replaced by three unrelated "
            "names (the clean prompt's answer and distractor are kept)")),
    "greater-than": TaskSpec("greater_than_data", "generate_greater_than_pairs", TASK_MODEL),
    "capital-country": TaskSpec("capital_country_data", "generate_capital_country_pairs", TASK_MODEL),
    "gender": TaskSpec("gender_data", "generate_gender_pairs", TASK_MODEL),
    "sva": TaskSpec("sva_data", "generate_sva_pairs", TASK_MODEL),
    "hypernymy": TaskSpec("hypernymy_data", "generate_hypernymy_pairs", TASK_MODEL),
    "planted": TaskSpec("planted_data", "generate_planted_pairs", "attrscope-planted"),
}


def task_names() -> list[str]:
    return list(GENERATED_TASKS)


# Column names of the seed study's files, accepted as aliases.
CORRUPTED_COLUMNS = ("corrupted", "corrupted_hard")
ID_COLUMNS = {"answer": "correct_idx", "distractor": "incorrect_idx"}


def _read_text(path: Path) -> str:
    """The file's text as UTF-8 (a byte-order mark is dropped); TaskDataError naming the file
    and the line of the first byte that is not UTF-8, or why the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TaskDataError(f"{path}: cannot read the task file ({e.strerror or e}).") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TaskDataError(
            f"{path}: line {line}, column {column}: byte 0x{data[e.start]:02x} is not UTF-8 "
            "text; save the file as UTF-8.") from None


def _read_rows(path: Path) -> tuple[list[dict], list[str]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        try:
            rows = list(reader)
            columns = reader.fieldnames or []
        except csv.Error as e:  # a NUL byte, a field over the size limit, a bad quote
            raise TaskDataError(f"{path}: line {reader.line_num} is not valid CSV: {e}.") from None
        duplicated = sorted({c for c in columns if columns.count(c) > 1})
        if duplicated:
            raise TaskDataError(f"{path}: duplicated column(s) {duplicated} in the header; give "
                                "each column once.")
        for i, row in enumerate(rows, start=1):
            if None in row:  # DictReader's key for cells beyond the header
                raise TaskDataError(f"{path}: row {i} has {len(columns) + len(row[None])} cells "
                                    f"but the header has {len(columns)} columns; quote cells "
                                    "that contain commas.")
    elif suffix in (".jsonl", ".json"):
        rows = []
        # split on newlines only: str.splitlines also splits at U+2028 etc., valid inside JSON
        for i, line in enumerate(_read_text(path).split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                raise TaskDataError(f"{path}: line {i} is not valid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise TaskDataError(f"{path}: line {i} is not a JSON object.")
            rows.append(obj)
        columns = sorted({k for r in rows for k in r})
    else:
        raise TaskDataError(f"{path}: unsupported file type {suffix!r}; use .csv or .jsonl.")
    if not rows:
        raise TaskDataError(f"{path}: the file has no rows.")
    return rows, list(columns)


def check_task_file(path: str | Path, corrupted_column: str | None = None,
                    n: int | None = None) -> None:
    """Read a task file's rows and columns without a model (encoding, CSV/JSON syntax, required
    columns, and an ``n`` of more pairs than it has rows), so that a bad file is refused before a
    model is loaded. Raises TaskDataError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Task file {path} does not exist.")
    rows, columns = _read_rows(path)
    _pick_columns(path, columns, corrupted_column)
    if n is not None and n > len(rows):
        raise TaskDataError(f"{path}: asked for n={n} pairs but the file has {len(rows)} "
                            f"row(s); give --n {len(rows)} or fewer.")


def _pick_columns(path: Path, columns: list[str], corrupted_column: str | None) -> dict[str, str]:
    """Which column holds each field: {"clean", "corrupted", "answer", "distractor"} -> name.
    Answers come as strings (``answer``/``distractor``) or, in the seed study's layout, as token
    ids (``correct_idx``/``incorrect_idx``)."""
    chosen, missing = {"clean": "clean"}, []
    if "clean" not in columns:
        missing.append("clean")
    if corrupted_column is not None:
        if corrupted_column not in columns:
            raise TaskDataError(f"{path}: no column {corrupted_column!r} (corrupted_column); "
                                f"the columns are {columns}.")
        chosen["corrupted"] = corrupted_column
    else:
        present = [c for c in CORRUPTED_COLUMNS if c in columns]
        if present:
            chosen["corrupted"] = present[0]
        else:
            missing.append(" or ".join(CORRUPTED_COLUMNS))
    for role, id_column in ID_COLUMNS.items():
        if role in columns:
            chosen[role] = role
        elif id_column in columns:
            chosen[role] = id_column
        else:
            missing.append(f"{role} (or {id_column}, token ids)")
    if missing:
        raise TaskDataError(
            f"{path}: missing column(s) {missing}; a task file needs columns clean, corrupted, "
            "answer, distractor (answers as strings, e.g. ' Mary' with its leading space; a list "
            "of strings for a set metric). Found columns: " + ", ".join(columns))
    return chosen


def _answer_value(value, column: str, tokenizer) -> str | tuple[str, ...]:
    """A cell -> answer string(s). Strings (or JSON lists of them) are kept; token ids (an int,
    or a list of ints, in an ``*_idx`` column) are decoded with the model's tokenizer."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # an answer that merely starts with "["
    is_ids = column in ID_COLUMNS.values()
    items = value if isinstance(value, list) else [value]
    if is_ids:
        decoded = []
        for item in items:
            try:
                token = int(item)
            except (TypeError, ValueError):
                raise ValueError(f"{column} must hold token ids, got {item!r}") from None
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError(f"{column} must hold token ids, got {item!r}")
            if not 0 <= token < len(tokenizer):
                raise ValueError(f"{column}: token id {token} is outside the tokenizer's "
                                 f"vocabulary of {len(tokenizer)}")
            decoded.append(tokenizer.decode([token]))
        items = decoded
    else:
        wrong = [item for item in items if not isinstance(item, str)]
        if wrong:
            raise ValueError(f"{column} must be a string (or a list of strings for a set), "
                             f"got {wrong[0]!r}")
    return tuple(items) if isinstance(value, list) else items[0]


def _positions_value(value) -> dict | None:
    """A ``positions`` cell -> its JSON object (None when empty); ValueError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"positions is not valid JSON ({e}): {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"positions must be a JSON object (name -> token index or word), got "
                         f"{value!r}")
    return value


def load_task_file(path: str | Path, model, n: int | None = None, skip_invalid: bool = False,
                   metric: str | Callable | None = None, corrupted_column: str | None = None
                   ) -> Task:
    """Read prompt pairs from a CSV or JSONL file. Rows are numbered from 1 (the first data
    row) in error messages.

    Columns: ``clean``; ``corrupted`` (or the seed study's ``corrupted_hard``, or the column
    named by ``corrupted_column``); ``answer`` and ``distractor`` as strings - a JSON list of
    strings (in a CSV cell: ``["gem", " gems"]``) for a set metric. The seed study's token-id
    columns ``correct_idx``/``incorrect_idx`` are accepted with a warning: ids only mean
    something for the tokenizer that made them. ``metric`` (default: ``logit_diff`` when every
    row has one answer and one distractor, else ``logprob_diff``): see
    :data:`attrscope.tasks.metrics.METRICS`, ``"module:function"`` or a callable. An optional
    ``positions`` column holds named positions of the clean prompt, a JSON object name -> token
    index, word, ``[word, k]`` or ``{"char": c}`` (:mod:`attrscope.tasks.positions`); every row
    then names the same ones.

    Invalid rows are an error listing every one, unless ``skip_invalid``: then they are left
    out and listed, with their reasons, in ``task.info["skipped"]``, and ``n`` counts valid
    rows."""
    model = as_bridge(model)
    path = Path(path)
    rows, columns = _read_rows(path)
    chosen = _pick_columns(path, columns, corrupted_column)
    id_columns = sorted(c for c in chosen.values() if c in ID_COLUMNS.values())
    if id_columns:
        warnings.warn(f"{path}: answers are read from token-id column(s) {id_columns}; token "
                      "ids are specific to the tokenizer that produced them, so this file is "
                      "only meaningful for that model. Prefer answers as strings.", stacklevel=2)
    errors, pairs, numbers = [], [], []
    absent_values: dict[int, list[str]] = {}
    for i, row in enumerate(rows, start=1):
        absent = [column for column in chosen.values() if row.get(column) is None]
        problems = [f"missing value(s) for {absent}"] if absent else []
        answers = {}
        for role in ("answer", "distractor"):
            if chosen[role] in absent:
                continue
            try:
                answers[role] = _answer_value(row[chosen[role]], chosen[role], model.tokenizer)
            except ValueError as e:
                problems.append(str(e))
        try:
            positions = _positions_value(row.get("positions"))
        except ValueError as e:
            problems.append(str(e))
        if problems:
            errors.extend(f"row {i}: {p}" for p in problems)
            absent_values[i] = problems
            continue
        pairs.append(PromptPair(str(row["clean"]), str(row[chosen["corrupted"]]),
                                answers["answer"], answers["distractor"], positions))
        numbers.append(i)
    if errors and not skip_invalid:
        raise TaskDataError(problem_list(f"{path}: {len(errors)} problem(s)", errors))
    if n is not None and not skip_invalid:
        if n > len(pairs):
            raise TaskDataError(f"{path}: asked for n={n} pairs but the file has {len(pairs)}.")
        pairs, numbers = pairs[:n], numbers[:n]
    if metric is None:
        single = all(len(p.answers) == 1 and len(p.distractors) == 1 for p in pairs)
        metric = "logit_diff" if single else "logprob_diff"
    info = {"source": "file", "path": str(path), "columns": chosen}
    task = build_task(model, pairs, name=str(path), info=info, file_rows=(numbers, absent_values),
                      skip_invalid=skip_invalid, limit=n, metric=metric)
    if n is not None and task.n < n:
        raise TaskDataError(f"{path}: asked for n={n} pairs but only {task.n} rows are valid "
                            f"({task.info['skipped']['count']} skipped).")
    return task


def _is_task_file(name_or_file: str) -> bool:
    path = Path(name_or_file)
    return path.suffix.lower() in (".csv", ".jsonl", ".json") or path.exists()


def check_task(name_or_file: str, metric: str | Callable | None = None,
               n: int | None = None) -> None:
    """Refuse, without a model, an unknown task name or metric, a metric ``module:function``
    that cannot be imported, an ``n`` below 1, or a task file that cannot be read or has fewer
    than ``n`` rows (see :func:`check_task_file`); rows are checked when the task is built."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be at least 1 (the number of prompt pairs), got {n!r}.")
    if metric is not None:
        check_metric(metric)
    if name_or_file in GENERATED_TASKS:
        return
    if not _is_task_file(name_or_file):
        raise _unknown_task(name_or_file)
    check_task_file(name_or_file, n=n)


def _unknown_task(name: str) -> ValueError:
    return ValueError(f"Unknown task {name!r}: use one of {task_names()} or a .csv/.jsonl file.")


def load_task(name_or_file: str, model, n: int | None = None, seed: int = 0,
              skip_invalid: bool = False, metric: str | Callable | None = None, **options
              ) -> Task:
    """A task by registered name (see :data:`GENERATED_TASKS`; ``n`` pairs generated from
    ``seed``, default ``DEFAULT_N``; ``split`` = "train", "heldout" or "all", the default) or from
    a CSV/JSONL file of prompt pairs (see :func:`load_task_file`; ``skip_invalid``,
    ``corrupted_column``). ``metric`` overrides the task's metric (a file's default is
    the logit difference, or ``logprob_diff`` when it has answer sets): a name of
    :data:`METRICS`, ``"module:function"``, or a callable ``metric(logits [batch, d_vocab], rows
    [batch]) -> [batch]`` (see :mod:`attrscope.tasks.metrics`; checked here, before any
    attribution). ``model``: anything :func:`attrscope.models.as_bridge` accepts.
    ``task.positions`` names token positions (:mod:`attrscope.tasks.positions`)."""
    if not isinstance(name_or_file, (str, os.PathLike)):
        raise TypeError(f"task must be a task name or a file path, got "
                        f"{type(name_or_file).__name__}.")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"n must be a whole number of prompt pairs or None, got {n!r}.")
    name_or_file = str(name_or_file)
    model = as_bridge(model)
    if metric is not None:
        check_metric(metric)
    if name_or_file in GENERATED_TASKS:
        spec = GENERATED_TASKS[name_or_file]
        n = DEFAULT_N if n is None else n
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        pairs = spec.generate(n, seed, **options)
        info = {"source": "generated", "seed": seed, **options}
        return build_task(model, pairs, name=name_or_file, info=info,
                          metric=metric or spec.metric, skip_invalid=skip_invalid)
    path = Path(name_or_file)
    if _is_task_file(name_or_file):
        if not path.exists():
            raise FileNotFoundError(f"Task file {path} does not exist.")
        unknown = sorted(set(options) - {"corrupted_column"})
        if unknown:
            raise ValueError(f"Option(s) {unknown} do not apply to a task file; it takes "
                             "corrupted_column (and n, skip_invalid, metric).")
        return load_task_file(path, model, n=n, skip_invalid=skip_invalid, metric=metric,
                              **options)
    raise _unknown_task(name_or_file)


__all__ = ["Task", "PromptPair", "TaskDataError", "MetricError", "TaskSpec", "build_task", "load_task",
           "load_task_file", "check_task", "check_task_file", "GENERATED_TASKS", "METRICS", "task_names"]
