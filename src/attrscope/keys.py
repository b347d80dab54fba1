"""The identity of a result: what produced it (model weights, task tokens, method, direction,
components, settings, dtype, device, attrscope version) as one key, and the file name it is stored
under. ``attribute``, ``compare``, ``sweep`` and the command line all use these, so a result made
by one is found by the others."""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import torch

from ._version import __version__
from .tasks.base import Task


def model_fingerprint(model) -> str:
    """SHA-256 of the model's name, config and every parameter's bytes."""
    digest = hashlib.sha256(str(model.cfg.model_name).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def task_fingerprint(task: Task) -> str:
    """SHA-256 of the task's tokens, answer positions, answer/distractor ids and named positions
    (``task.positions``): a result at ``positions=["S2"]`` depends on where each prompt's S2 is,
    so two tasks with the same tokens but other named positions get other keys."""
    digest = hashlib.sha256(json.dumps(task.describe(), sort_keys=True, default=str).encode())
    for t in (task.clean_tokens, task.corrupted_tokens, task.answer_pos, task.answer_ids,
              task.distractor_ids):
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    for name, index in sorted((getattr(task, "positions", None) or {}).items()):
        digest.update(f"position {name}:".encode())  # the name too: S1 and S2 swapped differ
        digest.update(index.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


# Settings that decide how work is batched, never the scores (tests check this): not in the key.
BATCHING_SETTINGS = ("max_memory", "max_batch_rows")


def result_key(model_fp: str, task_fp: str, method: str, direction: str,
               kinds: Sequence[str], settings: dict, dtype: str, device: str) -> str:
    settings = {k: v for k, v in settings.items() if k not in BATCHING_SETTINGS}
    payload = {"model": model_fp, "task": task_fp, "method": method, "direction": direction,
               "components": sorted(kinds), "settings": settings, "dtype": dtype,
               "device": device, "attrscope": __version__}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def attribution_key(model, task: Task, method: str, direction: str, kinds, settings: dict) -> str:
    """The key of a result (:func:`result_key`) from its inputs."""
    return result_key(model_fingerprint(model), task_fingerprint(task), method, direction,
                      [getattr(k, "name", k) for k in kinds] or ["edges"], settings,
                      str(next(model.parameters()).dtype), str(task.clean_tokens.device))


def result_name(method: str, direction: str, key: str) -> str:
    """The file a result with this key is stored under in a result folder or sweep store."""
    return f"{method}-{direction}-{key[:16]}.safetensors"
