"""Tasks: clean/corrupted prompt pairs, tokenized and validated, with a per-sample metric.

A task's metric (:mod:`attrscope.tasks.metrics`) compares the **answer** (the correct completion
of the clean prompt, or a set of them) with the **distractor** (or set); the default is the logit
difference answer - distractor. It is read at each sample's own last real token (the position
that predicts the answer) - never at a padding position. Prompts are right-padded; under causal
attention, padding after a sample's last real token cannot change anything the metric reads.
The corrupted prompt is scored with the clean prompt's answer and distractor.

A task also names token positions (:mod:`attrscope.tasks.positions`): ``task.positions[name]``
is each sample's token for that name, ``END`` its answer position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int

from . import positions as pos
from .metrics import (DIFFERENCE_METRICS, METRICS, MetricError, Readout, UserMetric,
                      resolve_metric, pad_sets)


def problem_list(what: str, problems: list[str]) -> str:
    """``what`` and the first problem on one line (all a one-line error shows), then, when
    there are more, every problem one a line."""
    first = f"{what}; {problems[0]}"
    return first if len(problems) == 1 else first + "; all of them:\n  " + "\n  ".join(problems)


class TaskDataError(ValueError):
    """Raised for prompt pairs that cannot be used; the message lists every bad row and why."""


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair. ``answer`` and ``distractor`` are strings (single tokens, with
    their leading space where the tokenizer needs one) or, for set metrics, sequences of them.
    ``positions``: named positions of the clean prompt, name -> a value of a form listed in
    :mod:`attrscope.tasks.positions` (a token index, a word, ``[word, k]``, ``{"char": c}``)."""

    clean: str
    corrupted: str
    answer: str | tuple[str, ...]
    distractor: str | tuple[str, ...]
    positions: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self):
        for role in ("answer", "distractor"):
            value = getattr(self, role)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, role, tuple(value))

    @property
    def answers(self) -> tuple[str, ...]:
        return self.answer if isinstance(self.answer, tuple) else (self.answer,)

    @property
    def distractors(self) -> tuple[str, ...]:
        return self.distractor if isinstance(self.distractor, tuple) else (self.distractor,)


@dataclass
class Task:
    """A batch of prompt pairs ready to run.

    clean_tokens, corrupted_tokens: ``[n, seq]`` LongTensors, right-padded with ``pad_id``.
    answer_pos: ``[n]`` index of each sample's last real token (same in both prompts of a pair).
    answer_ids, distractor_ids: ``[n, A]``, ``[n, D]`` token ids of each sample's answer and
    distractor sets, right-padded with -1 (A = D = 1 for the logit difference).
    metric_name: one of :data:`attrscope.tasks.metrics.METRICS`, or a user metric's
    ``module:qualname`` (then ``user_metric`` is it).
    reference_logprobs: ``[n, d_vocab]`` the clean prompts' log-probabilities at the answer
    position (only for ``kl``, computed once when the task is built).
    positions: name -> ``[n]`` token index of each sample (``END`` = ``answer_pos``).
    """

    name: str
    pairs: list[PromptPair]
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_pos: torch.Tensor
    answer_ids: torch.Tensor
    distractor_ids: torch.Tensor
    pad_id: int
    info: dict[str, Any] = field(default_factory=dict)
    metric_name: str = "logit_diff"
    user_metric: UserMetric | None = None
    reference_logprobs: torch.Tensor | None = None
    positions: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def metric_description(self) -> str:
        """``name: what it computes``, as recorded in every result's meta."""
        if self.user_metric is not None:
            return f"{self.metric_name}: user-defined metric(logits, rows)"
        return f"{self.metric_name}: {METRICS[self.metric_name]}"

    def failing(self, clean_metric: torch.Tensor) -> torch.Tensor | None:
        """``[n]`` True where the model fails the clean prompt (clean metric ``[n]`` <= 0), for
        the difference metrics; None for the others, where zero separates nothing."""
        return clean_metric <= 0 if self.metric_name in DIFFERENCE_METRICS else None

    def readout(self, rows: torch.Tensor) -> Readout:
        """The metric and token sets of the samples ``rows`` ``[batch]``."""
        rows = rows.to(self.answer_ids.device)
        reference = None if self.reference_logprobs is None else self.reference_logprobs[rows]
        user = None
        if self.user_metric is not None:
            metric = self.user_metric

            def user(logits: torch.Tensor) -> torch.Tensor:
                return metric(logits, rows.to(logits.device), self)

        return Readout(self.metric_name, self.answer_ids[rows], self.distractor_ids[rows],
                       reference, user)

    def metric_at(self, final_logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The metric from logits already read at the answer position.

        final_logits: ``[batch, d_vocab]``; rows: ``[batch]`` sample index of each batch row
        (default: row i is sample i). Returns ``[batch]``.
        """
        if rows is None:
            rows = torch.arange(final_logits.shape[0], device=final_logits.device)
        return self.readout(rows).from_logits(final_logits)

    def metric(self, logits: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample metric (e.g. logit difference answer - distractor) at the answer position.

        logits: ``[batch, seq, d_vocab]``; rows as in :meth:`metric_at`. Returns ``[batch]``.
        """
        if rows is None:
            if logits.shape[0] != self.n:
                raise ValueError(
                    f"logits have batch {logits.shape[0]} but the task has {self.n} samples; "
                    "pass rows= to say which sample each batch row is."
                )
            rows = torch.arange(self.n, device=logits.device)
        rows = rows.to(logits.device)
        pos = self.answer_pos.to(logits.device)[rows]
        final = logits[torch.arange(logits.shape[0], device=logits.device), pos]
        return self.metric_at(final, rows)

    def to(self, device: torch.device | str) -> "Task":
        for name in ("clean_tokens", "corrupted_tokens", "answer_pos", "answer_ids", "distractor_ids"):
            setattr(self, name, getattr(self, name).to(device))
        if self.reference_logprobs is not None:
            self.reference_logprobs = self.reference_logprobs.to(device)
        self.positions = {k: v.to(device) for k, v in self.positions.items()}
        return self

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, **self.info}


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_token(tokenizer, text: str, role: str, problems: list[str]) -> int | None:
    """The one token id of ``text``, or None after describing the problem in ``problems``."""
    toks = _encode(tokenizer, text) if text else []
    if len(toks) == 1:
        return toks[0]
    pieces = [tokenizer.decode([t]) for t in toks]
    hint = ""
    if text and not text.startswith(" ") and len(_encode(tokenizer, " " + text)) == 1:
        hint = f" (did you mean {(' ' + text)!r} with a leading space? it is one token)"
    problems.append(f"{role} {text!r} must be a single token but is {len(toks)} tokens {pieces}{hint}")
    return None


def _bos_id(model) -> int | None:
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    tok = model.tokenizer
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def build_task(
    model,
    pairs: Sequence[PromptPair],
    name: str,
    info: dict[str, Any] | None = None,
    file_rows: tuple[Sequence[int], dict[int, list[str]]] | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
    metric: str | Callable = "logit_diff",
) -> Task:
    """Tokenize and validate prompt pairs for ``model``.

    Every problem in every row is collected and raised together as one :class:`TaskDataError`
    naming the row and the offending text. ``file_rows``: (the file's row number of each pair,
    rows the caller's reader skipped already, with their reasons); default: 1-based indices and
    none. With ``skip_invalid``, rows with problems are left out instead and listed in
    ``task.info["skipped"]`` (count, and reasons per row, the reader's skips included); only if
    no row is left is it an error. ``limit`` keeps the first valid rows.
    ``metric``: one of :data:`~attrscope.tasks.metrics.METRICS`, a ``"module:function"``
    import path or a callable (:mod:`attrscope.tasks.metrics`); ``logit_diff`` needs exactly
    one answer and one distractor per row, the others take sets (every member one token).
    ``kl`` and user metrics run the model once on the clean prompts here (the reference
    distribution; the user metric's checks). Each pair's ``positions`` are resolved in its clean
    prompt (:mod:`attrscope.tasks.positions`); every row must name the same positions.
    """
    metric, user_metric = resolve_metric(metric)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("The model has no tokenizer; attrscope needs one to build a task.")
    if not pairs:
        raise TaskDataError(f"Task {name!r} has no prompt pairs.")
    row_numbers, earlier_skips = file_rows if file_rows is not None else (None, None)
    row_numbers = list(row_numbers) if row_numbers is not None else list(range(1, len(pairs) + 1))
    bos = _bos_id(model)
    prefix = [bos] if bos is not None else []
    n_ctx = getattr(model.cfg, "n_ctx", None)

    errors: list[str] = []
    skipped: dict[int, list[str]] = dict(earlier_skips or {})
    kept: list[PromptPair] = []
    clean_ids, corrupted_ids, answers, distractors, named = [], [], [], [], []
    for row, pair in zip(row_numbers, pairs):
        if limit is not None and len(kept) >= limit:
            break
        problems = []
        if not pair.clean.strip():
            problems.append("clean prompt is empty")
        if not pair.corrupted.strip():
            problems.append("corrupted prompt is empty")
        c = prefix + _encode(tokenizer, pair.clean)
        k = prefix + _encode(tokenizer, pair.corrupted)
        if pair.clean.strip() and pair.corrupted.strip() and len(c) != len(k):
            problems.append(
                f"clean and corrupted prompts differ in token length ({len(c)} vs {len(k)}), so "
                f"they cannot be patched position by position: clean={pair.clean!r} "
                f"corrupted={pair.corrupted!r}"
            )
        if n_ctx is not None and max(len(c), len(k)) > n_ctx:
            problems.append(
                f"prompt has {max(len(c), len(k))} tokens, more than the model's context of {n_ctx}"
            )
        where = _resolve_positions(tokenizer, pair, c, len(prefix), problems)
        ids = {}
        for role, texts in (("answer", pair.answers), ("distractor", pair.distractors)):
            if metric == "logit_diff" and len(texts) != 1:
                problems.append(f"the logit difference needs one {role}, got {len(texts)}: "
                                f"{list(texts)} (use a set metric: logprob_diff or prob_diff)")
                continue
            if not texts:
                problems.append(f"the {role} set is empty")
                continue
            ids[role] = []
            for text in texts:
                tok = _single_token(tokenizer, text, role, problems)
                if tok is not None:
                    ids[role].append(tok)
            if len(ids[role]) != len(texts):
                del ids[role]
        if len(ids) == 2:
            shared = sorted(set(ids["answer"]) & set(ids["distractor"]))
            if shared and metric == "logit_diff":
                problems.append(f"answer and distractor are the same token {pair.answer!r}")
            elif shared:
                problems.append("answer and distractor sets share token(s) "
                                f"{[tokenizer.decode([t]) for t in shared]}")
            for role in ("answer", "distractor"):
                if len(set(ids[role])) != len(ids[role]):
                    problems.append(f"the {role} set repeats a token: {list(getattr(pair, role + 's'))}")
        if problems and skip_invalid:
            skipped[row] = problems
            continue
        if problems:
            errors.extend(f"row {row}: {p}" for p in problems)
            continue
        kept.append(pair)
        clean_ids.append(c)
        corrupted_ids.append(k)
        answers.append(ids["answer"])
        distractors.append(ids["distractor"])
        named.append((row, where))

    if errors:
        shown = errors[:50]
        more = f"\n... and {len(errors) - 50} more problems" if len(errors) > 50 else ""
        raise TaskDataError(problem_list(f"Task {name!r}: {len(errors)} problem(s) in the prompt "
                                         "pairs", shown) + more)

    if not kept:
        reasons = "\n  ".join(f"row {r}: {'; '.join(p)}" for r, p in sorted(skipped.items())[:50])
        raise TaskDataError(f"Task {name!r}: no valid prompt pair is left after skipping "
                            f"{len(skipped)} invalid row(s):\n  {reasons}")
    info = dict(info or {})
    if skip_invalid:
        info["skipped"] = {"count": len(skipped),
                           "rows": {str(r): p for r, p in sorted(skipped.items())}}

    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    seq = max(len(c) for c in clean_ids)
    n = len(clean_ids)
    clean = torch.full((n, seq), pad, dtype=torch.long)
    corrupted = torch.full((n, seq), pad, dtype=torch.long)
    for i, (c, k) in enumerate(zip(clean_ids, corrupted_ids)):
        clean[i, : len(c)] = torch.tensor(c)
        corrupted[i, : len(k)] = torch.tensor(k)
    answer_pos = torch.tensor([len(c) - 1 for c in clean_ids], dtype=torch.long)
    info["metric"] = metric
    if user_metric is not None:
        info["metric_fingerprint"] = user_metric.fingerprint
    device = model.cfg.device
    task = Task(
        name=name,
        pairs=kept,
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_pos=answer_pos,
        answer_ids=pad_sets(answers),
        distractor_ids=pad_sets(distractors),
        pad_id=int(pad),
        info=info,
        metric_name=metric,
        user_metric=user_metric,
        positions={**_position_tensors(name, named), pos.END: answer_pos.clone()},
    ).to(device if device is not None else "cpu")
    if metric == "kl" or user_metric is not None:
        logits = answer_logits(model, task.clean_tokens, task.answer_pos)
        if metric == "kl":
            task.reference_logprobs = torch.log_softmax(logits, dim=-1)
        else:
            check_user_metric(task, logits)
    return task


def _resolve_positions(tokenizer, pair: PromptPair, clean_ids: list[int], n_prefix: int,
                       problems: list[str]) -> dict[str, int]:
    """The token index of each of ``pair.positions`` in its clean prompt (model input
    ``clean_ids``, after ``n_prefix`` BOS tokens); what cannot be resolved goes to problems."""
    if not pair.positions:
        return {}
    if not isinstance(pair.positions, dict):
        problems.append(f"positions must be a JSON object (name -> token index or word), got "
                        f"{type(pair.positions).__name__}")
        return {}
    spans = pos.token_spans(tokenizer, pair.clean, clean_ids[n_prefix:])
    where = {}
    for name, spec in pair.positions.items():
        try:
            pos.check_spec(name, spec)
            where[name] = pos.resolve(spec, pair.clean, spans, n_prefix)
        except pos.PositionError as e:
            problems.append(f"position {name!r}: {e}")
    return where


def _position_tensors(task_name: str, named: list[tuple[int, dict[str, int]]]
                      ) -> dict[str, torch.Tensor]:
    """name -> ``[n]`` token indices from each kept row's resolved positions; every row must
    name the same ones (TaskDataError naming the row and the name otherwise)."""
    names = list(dict.fromkeys(name for _, where in named for name in where))
    errors = [f"row {row}: no position {name!r}, which other rows name"
              for row, where in named for name in names if name not in where]
    if errors:
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        raise TaskDataError(f"Task {task_name!r}: every row must name the same positions:\n  "
                            + "\n  ".join(errors[:50]) + more)
    return {name: torch.tensor([where[name] for _, where in named], dtype=torch.long)
            for name in names}


@torch.no_grad()
def answer_logits(model, tokens: Int[torch.Tensor, "n seq"], answer_pos: Int[torch.Tensor, " n"],
                  max_elements: int = 1 << 26) -> Float[torch.Tensor, "n V"]:
    """The model's float32 logits at each sample's answer position, in batches whose full
    logits stay under ``max_elements``."""
    n, seq = tokens.shape
    vocab = int(getattr(model.cfg, "d_vocab_out", None) or model.cfg.d_vocab)
    step = max(1, max_elements // max(1, seq * vocab))
    out = []
    for start in range(0, n, step):
        logits = model(tokens[start:start + step])
        rows = torch.arange(logits.shape[0], device=logits.device)
        out.append(logits[rows, answer_pos[start:start + step].to(logits.device)].float())
    return torch.cat(out)


def check_user_metric(task: Task, logits: Float[torch.Tensor, "n V"]) -> None:
    """A user metric's checks on the clean prompts' answer logits ``[n, V]``: a tensor of shape
    ``[n]``, finite, and the same values when the rows come in another order and in parts (the
    methods call it on arbitrary subsets of rows, repeated). Raises MetricError naming it."""
    name = task.metric_name
    rows = torch.arange(task.n, device=logits.device)
    full = task.readout(rows).from_logits(logits)
    bad = (~torch.isfinite(full)).nonzero().flatten()
    if bad.numel():
        raise MetricError(f"metric {name} is NaN or infinite on {bad.numel()} of {task.n} clean "
                          f"prompts of task {task.name} (samples {[int(i) + 1 for i in bad[:5]]}).")
    order = torch.cat([rows.flip(0), rows[:1]])  # reversed, with a repeat
    again = task.readout(order).from_logits(logits[order])
    scale = float(full.abs().max()) if full.numel() else 0.0
    if not torch.allclose(again, full[order], rtol=1e-5, atol=1e-5 * max(1.0, scale)):
        worst = float((again - full[order]).abs().max())
        raise MetricError(f"metric {name} does not give each row the same value when the rows come "
                          f"in another order (max difference {worst:.3g}); it must compute each "
                          "row from that row's logits and rows[i] alone.")
