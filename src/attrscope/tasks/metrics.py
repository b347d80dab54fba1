"""Task metrics, read from the logits at each sample's answer position.

Every metric compares an **answer** token set with a **distractor** token set (for the logit
difference each set is one token). Larger is better for the clean prompt's behaviour:

- ``logit_diff``: logit(answer) - logit(distractor) (IOI, capital–country, gender, SVA);
- ``logprob_diff``: log sum p(answer set) - log sum p(distractor set), i.e. the difference of
  the sets' logsumexp of logits; the softmax normaliser cancels, so only the sets' logits are
  needed (hypernymy);
- ``prob_diff``: sum p(answer set) - sum p(distractor set), with p the softmax over the whole
  vocabulary (greater-than: mass on years after the start minus mass on the others).

A :class:`Readout` holds the token sets of a batch's rows and computes the metric either from
full logits or from the final-normed residual stream, unembedding only what the metric needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

METRICS = {
    "logit_diff": "logit(answer) - logit(distractor)",
    "logprob_diff": "log sum p(answer set) - log sum p(distractor set)",
    "prob_diff": "sum p(answer set) - sum p(distractor set), softmax over the whole vocabulary",
}
PAD_ID = -1


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; use one of {sorted(METRICS)}.")
    return name


@dataclass
class Readout:
    """The token sets a metric reads for ``R`` batch rows.

    answers: ``[R, A]`` and distractors: ``[R, D]`` token ids, right-padded with ``PAD_ID``
    (-1); every row has at least one real id in each. For ``logit_diff`` A = D = 1.
    """

    metric: str
    answers: torch.Tensor
    distractors: torch.Tensor

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """logits ``[R, d_vocab]`` at the answer position -> metric ``[R]``."""
        if self.metric == "prob_diff":
            probs = torch.softmax(logits, dim=-1)
            return self._set_sum(probs, self.answers) - self._set_sum(probs, self.distractors)
        return self._combine(self._gather(logits, self.answers), self._gather(logits, self.distractors))

    def from_final(self, x: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor) -> torch.Tensor:
        """x ``[R, d_model]`` the final-normed residual stream at the answer position, W_U
        ``[d_model, d_vocab]``, b_U ``[d_vocab]`` -> metric ``[R]``; unembeds only the needed
        columns unless the metric needs the whole softmax (``prob_diff``)."""
        if self.metric == "prob_diff":
            return self.from_logits(x @ W_U + b_U)
        if self.metric == "logit_diff":  # one direction per row: cheaper than two columns
            ans, dis = self.answers[:, 0], self.distractors[:, 0]
            direction = W_U[:, ans] - W_U[:, dis]  # [d_model, R]
            return (x * direction.T).sum(-1) + b_U[ans] - b_U[dis]
        return self._combine(self._unembed(x, W_U, b_U, self.answers),
                             self._unembed(x, W_U, b_U, self.distractors))

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
    def _unembed(x: torch.Tensor, W_U: torch.Tensor, b_U: torch.Tensor, ids: torch.Tensor
                 ) -> torch.Tensor:
        """Logits of the ``[R, K]`` ids only -> ``[R, K]``, -inf at padding."""
        safe = ids.clamp(min=0)
        logits = torch.einsum("rd,drk->rk", x, W_U[:, safe]) + b_U[safe]
        return logits.masked_fill(ids == PAD_ID, float("-inf"))


def pad_sets(sets: list[list[int]], device=None) -> torch.Tensor:
    """Token-id lists -> ``[len(sets), max size]`` LongTensor right-padded with ``PAD_ID``."""
    width = max(len(s) for s in sets)
    out = torch.full((len(sets), width), PAD_ID, dtype=torch.long, device=device)
    for i, s in enumerate(sets):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
