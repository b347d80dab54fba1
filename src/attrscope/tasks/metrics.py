"""Task metrics, read from the logits at each sample's answer position.

Larger is always better for the clean prompt's behaviour, so that every score keeps the sign
conventions of :mod:`attrscope.scores` (denoising: positive = restores the clean behaviour;
noising: negative = needed for it). The difference metrics compare an **answer** token set with
a **distractor** token set (for the logit difference each set is one token):

- ``logit_diff``: logit(answer) - logit(distractor) (IOI, capital–country, gender, SVA);
- ``logprob_diff``: log sum p(answer set) - log sum p(distractor set), i.e. the difference of
  the sets' logsumexp of logits; the softmax normaliser cancels, so only the sets' logits are
  needed (hypernymy);
- ``prob_diff``: sum p(answer set) - sum p(distractor set), with p the softmax over the whole
  vocabulary (greater-than: mass on years after the start minus mass on the others).

The others read the whole next-token distribution:

- ``kl``: **minus** the KL divergence KL(p_clean || p_run) = sum_v p_clean(v) (log p_clean(v) -
  log p_run(v)) of the run's next-token distribution from the clean prompt's (the clean
  log-probabilities are computed once, when the task is built). It is 0 on the clean prompt and
  negative elsewhere: the minus keeps "larger = closer to the clean behaviour", so a positive
  denoising score is a component whose clean activation brings the distribution back towards
  the clean one, and a negative noising score one whose corruption moves it away (the clean -
  corrupted gap is KL(p_clean || p_corrupted) > 0). ACDC's and EAP-IG's KL loss is its negative.
- ``answer_prob``: sum p(answer set), the probability of the clean prompt's answer;
- ``answer_logprob``: log sum p(answer set).

A user metric is any callable ``metric(logits [batch, d_vocab], rows [batch]) -> [batch]``
(``rows[i]``: the task sample of batch row i; a third parameter named ``task`` receives the task
so that the metric can read its tensors, e.g. ``task.answer_ids[rows]``), or its import path
``"module:function"`` (the command line's ``--metric``). It must be larger for the clean
behaviour too, and depend on each row alone. It is checked when the task is built (a tensor of
shape ``[batch]``, finite on the clean prompts, the same values for the rows in any order) and
recorded by its name ``module:qualname``.

A :class:`Readout` holds what the metric reads for a batch's rows and computes the metric either
from full logits or from the final-normed residual stream, unembedding only the columns the
metric needs (the whole vocabulary for ``prob_diff``, ``kl``, ``answer_*`` and user metrics:
:attr:`Readout.needs_full_logits`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from jaxtyping import Float, Int

METRICS = {
    "logit_diff": "logit(answer) - logit(distractor)",
    "logprob_diff": "log sum p(answer set) - log sum p(distractor set)",
    "prob_diff": "sum p(answer set) - sum p(distractor set), softmax over the whole vocabulary",
    "kl": "-KL(p_clean || p_run) of the next-token distributions (0 on the clean prompt, "
          "negative elsewhere)",
    "answer_prob": "sum p(answer set), softmax over the whole vocabulary",
    "answer_logprob": "log sum p(answer set), softmax over the whole vocabulary",
}
# Metrics whose zero separates preferring the answer (> 0) from not: a clean prompt at or below
# it is one the model fails. For the others (a probability, a divergence, a user metric) zero
# means no such thing.
DIFFERENCE_METRICS = ("logit_diff", "logprob_diff", "prob_diff")
FULL_VOCAB_METRICS = ("prob_diff", "kl", "answer_prob", "answer_logprob")
PAD_ID = -1
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class MetricError(ValueError):
    """A metric that cannot be used: unknown, not importable, or failing its checks."""


@dataclass(frozen=True)
class UserMetric:
    """A user-defined metric: ``fn(logits, rows)`` or ``fn(logits, rows, task=task)``."""

    fn: Callable[..., torch.Tensor]
    name: str
    wants_task: bool

    @classmethod
    def of(cls, fn: Callable, name: str | None = None) -> "UserMetric":
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # a builtin without a signature: called with two
            params = {}
        wants_task = "task" in params
        if name is None:
            name = f"{getattr(fn, '__module__', None) or '?'}:" \
                   f"{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"
        return cls(fn, name, wants_task)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the function's code, constants and captured values, so that two functions
        of one name (a notebook cell run again after an edit) key different results."""
        code = getattr(self.fn, "__code__", None)
        if code is None:  # a callable object or builtin: its type and representation
            return hashlib.sha256(f"{type(self.fn).__qualname__}{self.fn!r}".encode()).hexdigest()
        cells = []
        for cell in getattr(self.fn, "__closure__", None) or ():
            try:
                cells.append(repr(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        payload = code.co_code + repr((code.co_consts, code.co_names, cells,
                                       getattr(self.fn, "__defaults__", None))).encode()
        return hashlib.sha256(payload).hexdigest()

    def __call__(self, logits: Float[torch.Tensor, "R V"], rows: Int[torch.Tensor, " R"],
                 task: Any = None) -> Float[torch.Tensor, " R"]:
        out = self.fn(logits, rows, task=task) if self.wants_task else self.fn(logits, rows)
        if not isinstance(out, torch.Tensor):
            raise MetricError(f"metric {self.name} returned {type(out).__name__}, not a tensor "
                              f"of shape [{logits.shape[0]}] (one value per batch row).")
        if tuple(out.shape) != (logits.shape[0],):
            raise MetricError(f"metric {self.name} returned shape {list(out.shape)} for logits "
                              f"of shape {list(logits.shape)}; it must return "
                              f"[{logits.shape[0]}] (one value per batch row).")
        return out.to(device=logits.device, dtype=logits.dtype)


def check_metric(metric: "str | Callable") -> str:
    """The name of ``metric`` (a built-in name, a ``"module:function"`` import path or a
    callable); raises MetricError, one line naming it, if it is none of these or cannot be
    imported. Import paths are imported here, so that a bad one is refused before any work."""
    return resolve_metric(metric)[0]


def resolve_metric(metric: "str | Callable") -> tuple[str, UserMetric | None]:
    """``(name, user metric or None)`` of a built-in name, an import path or a callable."""
    if callable(metric) and not isinstance(metric, str):
        user = metric if isinstance(metric, UserMetric) else UserMetric.of(metric)
        return user.name, user
    if not isinstance(metric, str):
        raise MetricError(f"metric must be a name, 'module:function' or a callable, got "
                          f"{type(metric).__name__}.")
    if metric in METRICS:
        return metric, None
    if not _IMPORT_PATH.match(metric):
        raise MetricError(f"Unknown metric {metric!r}; use one of {sorted(METRICS)} or "
                          "'module:function' (a function metric(logits, rows) -> [batch]).")
    module_name, _, qualname = metric.partition(":")
    try:
        obj: Any = _import(module_name)
    except Exception as e:  # ImportError, or whatever importing the user's module raised
        raise MetricError(f"metric {metric!r}: cannot import module {module_name!r} "
                          f"({type(e).__name__}: {e}).") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise MetricError(f"metric {metric!r}: module {module_name!r} has no {qualname!r}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise MetricError(f"metric {metric!r}: {qualname!r} is a {type(obj).__name__}, not a "
                          "function metric(logits, rows) -> [batch].")
    return metric, UserMetric.of(obj, name=metric)


def _import(module_name: str):
    """The module, found on ``sys.path`` or else in the current folder (the ``attrscope``
    command's ``sys.path`` does not hold it, unlike ``python -m``'s)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, here)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(here)


@dataclass
class Readout:
    """What a metric reads for ``R`` batch rows.

    answers: ``[R, A]`` and distractors: ``[R, D]`` token ids, right-padded with ``PAD_ID``
    (-1); every row has at least one real id in each. For ``logit_diff`` A = D = 1.
    reference: ``[R, V]`` the clean prompts' log-probabilities at the answer position (``kl``).
    user: a user metric with its rows (and task) bound: logits ``[R, V]`` -> ``[R]``.
    """

    metric: str
    answers: torch.Tensor
    distractors: torch.Tensor
    reference: torch.Tensor | None = None
    user: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def needs_full_logits(self) -> bool:
        """True when the metric reads the whole vocabulary (a softmax, a divergence, a user
        metric): then a forward unembeds every column, else only the answer/distractor ones."""
        return self.user is not None or self.metric in FULL_VOCAB_METRICS

    def from_logits(self, logits: Float[torch.Tensor, "R V"]) -> Float[torch.Tensor, " R"]:
        """logits ``[R, d_vocab]`` at the answer position -> metric ``[R]``."""
        if self.user is not None:
            return self.user(logits)
        if self.metric == "prob_diff":
            probs = torch.softmax(logits, dim=-1)
            return self._set_sum(probs, self.answers) - self._set_sum(probs, self.distractors)
        if self.metric == "answer_prob":
            return self._set_sum(torch.softmax(logits, dim=-1), self.answers)
        if self.metric == "answer_logprob":
            return (torch.logsumexp(self._gather(logits, self.answers), dim=-1)
                    - torch.logsumexp(logits, dim=-1))
        if self.metric == "kl":
            return -kl_divergence(self.reference.to(logits.device), logits).to(logits.dtype)
        return self._combine(self._gather(logits, self.answers), self._gather(logits, self.distractors))

    def from_final(self, x: Float[torch.Tensor, "R d"], W_U: Float[torch.Tensor, "d V"],
                   b_U: Float[torch.Tensor, " V"], softcap: float | None = None
                   ) -> Float[torch.Tensor, " R"]:
        """x ``[R, d_model]`` the final-normed residual stream at the answer position, W_U
        ``[d_model, d_vocab]``, b_U ``[d_vocab]`` -> metric ``[R]``; unembeds only the needed
        columns unless the metric needs the whole vocabulary (:attr:`needs_full_logits`).
        ``softcap``: the model's final logit soft-cap c (logits ``c tanh(l / c)``, Gemma-2),
        elementwise, so it too is applied to the needed columns only."""
        if self.needs_full_logits:
            return self.from_logits(capped(x @ W_U + b_U, softcap))
        if self.metric == "logit_diff" and softcap is None:  # one direction per row
            ans, dis = self.answers[:, 0], self.distractors[:, 0]
            direction = W_U[:, ans] - W_U[:, dis]  # [d_model, R]
            return (x * direction.T).sum(-1) + b_U[ans] - b_U[dis]
        return self._combine(self._unembed(x, W_U, b_U, self.answers, softcap),
                             self._unembed(x, W_U, b_U, self.distractors, softcap))

    def _combine(self, good: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
        """good ``[R, A]``, bad ``[R, D]`` logits with -inf at padding -> ``[R]``."""
        if self.metric == "logit_diff":
            return good[:, 0] - bad[:, 0]
        return torch.logsumexp(good, dim=-1) - torch.logsumexp(bad, dim=-1)

    @staticmethod
    def _gather(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """values ``[R, V]``, ids ``[R, K]`` -> ``[R, K]`` with -inf where ids is padding."""
        picked = values.gather(1, ids.clamp(min=0))
        return picked.masked_fill(ids == PAD_ID, float("-inf"))

    @staticmethod
    def _set_sum(probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        picked = probs.gather(1, ids.clamp(min=0))
        return picked.masked_fill(ids == PAD_ID, 0.0).sum(-1)

    @staticmethod
    def _unembed(x: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor, ids: torch.Tensor,
                 softcap: float | None = None) -> torch.Tensor:
        """Logits (soft-capped by ``softcap``) of the ``[R, K]`` ids only -> ``[R, K]``, -inf
        at padding."""
        safe = ids.clamp(min=0)
        logits = capped(torch.einsum("rd,drk->rk", x, W_U[:, safe]) + b_U[safe], softcap)
        return logits.masked_fill(ids == PAD_ID, float("-inf"))


def capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Logits soft-capped at ``softcap`` (``c tanh(l / c)``, Gemma-2's final logits) or as
    they are (None)."""
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def kl_divergence(reference: Float[torch.Tensor, "R V"], logits: Float[torch.Tensor, "R V"]
                  ) -> Float[torch.Tensor, " R"]:
    """KL(p_ref || p) per row, from the reference log-probabilities and the logits of p,
    computed in at least float32 (a small divergence is a difference of close numbers)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    reference = reference.to(dtype)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return (reference.exp() * (reference - logp)).sum(-1)


def pad_sets(sets: list[list[int]], device=None) -> torch.Tensor:
    """Token-id lists -> ``[len(sets), max size]`` LongTensor right-padded with ``PAD_ID``."""
    width = max(len(s) for s in sets)
    out = torch.full((len(sets), width), PAD_ID, dtype=torch.long, device=device)
    for i, s in enumerate(sets):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
