"""User-defined metrics for the tests, importable as ``metric_fns:NAME`` (tests/ is on the path)."""

import torch


def logit_diff(logits, rows, task):
    """The logit difference, written as a user would: reads the task's answer ids by row."""
    answer = task.answer_ids[rows, 0].to(logits.device)
    distractor = task.distractor_ids[rows, 0].to(logits.device)
    return logits.gather(1, answer[:, None])[:, 0] - logits.gather(1, distractor[:, None])[:, 0]


def wrong_shape(logits, rows):
    return logits[:, :2]


def not_finite(logits, rows):
    return torch.where(rows == 1, torch.nan, logits[:, 0])


def batch_centred(logits, rows):
    """Depends on the other rows of the batch: a different value for a row in another batch."""
    return logits[:, 0] - logits[:, 0].mean()


NOT_CALLABLE = 3
