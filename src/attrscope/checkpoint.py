"""Resumable long runs: finished chunks of a computation kept on disk until its result is saved.

A long method (``ap``, ``ig``, ``exact``, a path survey, a counterfactual search, an ablation
sweep) splits its work into *logical* chunks - a (kind, layer), a block of edges, a search step,
an ablated set - whose names never depend on ``max_memory`` or ``max_batch_rows``. Each
finished chunk is written atomically, with a checksum, to ``<folder>/<chunk>.safetensors`` by
:meth:`Checkpoint.chunk`; a rerun of the same computation reads it back instead of computing
it. An interrupted run (Ctrl-C or ``kill -9``) therefore loses at most the chunk in flight, and
since each chunk is stored exactly and the chunks are combined in a fixed order, the resumed
result is bit-identical to an uninterrupted one.

The folder belongs to one computation, named by a key (the result key of
:func:`attrscope.keys.result_key`: model, task, method, direction, settings). A chunk
written under another key, or one that fails its checksum, is never used: it is recomputed
with a :class:`CorruptChunkWarning` naming the file. :meth:`Checkpoint.discard` removes the
folder once the whole result is saved.

:func:`waiting_lock` is the lock two runs writing the same result take, so that the second
waits for the first and then reuses its result instead of computing it again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from filelock import FileLock, Timeout

from .scores import ResultFileError, Scores, read_verified, write_atomically

Chunk = dict[str, torch.Tensor]
_KEY = "attrscope.checkpoint_key"
_NAME = "attrscope.chunk"


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends before killing a job), raised where the program
    is, as Ctrl-C raises KeyboardInterrupt: the same clean-up runs and finished chunks stay."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) instead of
    ending the process at once. Only the main thread can take signals; elsewhere nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CorruptChunkWarning(UserWarning):
    """A checkpointed chunk that failed verification and is being recomputed."""


class CorruptResultWarning(UserWarning):
    """A cached result that failed verification and is being recomputed."""


class NoCheckpoint:
    """Keeps nothing: every chunk is computed (the default of every method)."""

    reused = computed = 0

    def get(self, name: str) -> None:
        return None

    def put(self, name: str, tensors: Chunk) -> None:
        pass

    def stored(self) -> int:
        return 0

    def discard(self) -> None:
        pass

    def chunk(self, name: str, compute: Callable[[], Chunk],
              on_reuse: Callable[[], object] | None = None) -> Chunk:
        return compute()


NO_CHECKPOINT = NoCheckpoint()


class Checkpoint:
    """Finished chunks of the computation ``key``, as files in ``folder`` (created on first
    write). ``reused`` / ``computed`` count the chunks read back (:meth:`get`) and stored
    (:meth:`put`) by this object."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.folder = Path(folder)
        self.key = str(key)
        self.reused = 0
        self.computed = 0

    def path(self, name: str) -> Path:
        return self.folder / f"{_file_name(name)}.safetensors"

    def get(self, name: str) -> Chunk | None:
        """The stored chunk ``name`` if it was written for this key and verifies, else None
        (with a :class:`CorruptChunkWarning` when a file is there but unusable)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            tensors, header = read_verified(path)
        except ResultFileError as e:
            warnings.warn(f"{e} Recomputing that chunk.", CorruptChunkWarning, stacklevel=3)
            return None
        if header.get(_KEY) != self.key or header.get(_NAME) != name:
            warnings.warn(f"{path} was written for another computation; recomputing that chunk.",
                          CorruptChunkWarning, stacklevel=3)
            return None
        self.reused += 1
        # copies: the tensors read may share memory with the file
        return {k: v.clone() for k, v in tensors.items()}

    def put(self, name: str, tensors: Chunk) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        write_atomically(self.path(name), cpu, {_KEY: self.key, _NAME: name})
        self.computed += 1

    def chunk(self, name: str, compute: Callable[[], Chunk],
              on_reuse: Callable[[], object] | None = None) -> Chunk:
        """The chunk ``name``: read back if stored (then ``on_reuse()`` is called, e.g. to
        advance a progress bar), else ``compute()``d and stored. The tensors are returned on the
        CPU either way, exactly as stored, so a fresh and a resumed run combine the same values."""
        found = self.get(name)
        if found is not None:
            if on_reuse is not None:
                on_reuse()
            return found
        tensors = {k: v.detach().cpu().contiguous() for k, v in compute().items()}
        self.put(name, tensors)
        return tensors

    def stored(self) -> int:
        """How many chunk files the folder holds now."""
        return len(list(self.folder.glob("*.safetensors"))) if self.folder.is_dir() else 0

    def discard(self) -> None:
        """Remove the folder (once the whole result is saved elsewhere)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def as_checkpoint(checkpoint: "Checkpoint | NoCheckpoint | str | os.PathLike | None",
                  key: Callable[[], str]) -> "Checkpoint | NoCheckpoint":
    """``checkpoint`` as an object: None keeps nothing; a folder becomes a :class:`Checkpoint`
    for the computation ``key()`` (called only then: it fingerprints the model and task)."""
    if checkpoint is None:
        return NO_CHECKPOINT
    if isinstance(checkpoint, (Checkpoint, NoCheckpoint)):
        return checkpoint
    if isinstance(checkpoint, (str, os.PathLike)):
        return Checkpoint(checkpoint, key())
    raise TypeError(f"checkpoint must be a folder path or a Checkpoint, got "
                    f"{type(checkpoint).__name__}.")


def lock_path(result: Path) -> Path:
    """The lock file of ``result``: ``.locks/<name>.lock`` beside it. Lock files stay (removing
    one while another run waits on it would let a third run take a second lock), so they are
    kept out of sight."""
    return result.parent / ".locks" / f"{result.name}.lock"


@contextmanager
def waiting_lock(path: Path, log: Callable[[str], None], what: str) -> Iterator[None]:
    """Hold the lock file ``path`` (see :func:`lock_path`) for the block; when another run holds it,
    say so once with ``log`` and wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"waiting for another attrscope run that is computing {what} ({path}) ...")
        started = time.monotonic()
        lock.acquire()
        log(f"... it finished after {time.monotonic() - started:.0f}s")
    try:
        yield
    finally:
        lock.release()


def reuse_or_compute(path: Path, key: str, compute: Callable[["Checkpoint"], Scores],
                     log: Callable[[str], None], what: str) -> tuple[Scores, bool]:
    """The result at ``path`` if it verifies and was made for ``key``; else ``compute(checkpoint)``
    saved there with ``meta["cache_key"] = key``, resuming the chunks an interrupted run left in
    ``<path>.parts/`` (removed once the result is saved). A second run asking for the same
    ``path`` meanwhile waits on its :func:`lock_path` and then reuses the result. Returns (scores,
    reused)."""
    with waiting_lock(lock_path(path), log, what):
        cached = _verified_cache(path) if path.exists() else None
        if cached is not None and cached.meta.get("cache_key") == key:
            log(f"{what}: reusing {path} (same model, task, settings)")
            return cached, True
        checkpoint = Checkpoint(path.with_suffix(".parts"), key)
        kept = checkpoint.stored()
        if kept:
            log(f"{what}: resuming the interrupted run from {kept} finished chunk(s) in "
                f"{checkpoint.folder}")
        scores = compute(checkpoint)
        scores.meta["cache_key"] = key
        scores.save(path)
        checkpoint.discard()
    resumed = (f"; {checkpoint.reused} chunk(s) resumed, {checkpoint.computed} computed"
               if kept else "")
    log(f"{what}: computed in {scores.meta.get('seconds', 0):.1f}s{resumed} -> {path}")
    return scores, False


def _verified_cache(path: Path) -> Scores | None:
    """The result saved at ``path`` if its checksum verifies, else None with a warning."""
    try:
        return Scores.load(path, require_checksum=True)
    except ResultFileError as e:
        warnings.warn(f"{e} Recomputing it.", CorruptResultWarning, stacklevel=4)
        return None


def kept_in(folder: Path) -> tuple[int, int]:
    """(finished results, checkpointed chunks) under ``folder``: what an interrupted run kept."""
    if not folder.is_dir():
        return 0, 0
    chunks = sum(1 for _ in folder.rglob("*.parts/*.safetensors"))
    results = sum(1 for p in folder.rglob("*.safetensors") if not p.parent.name.endswith(".parts"))
    return results, chunks


def _file_name(name: str) -> str:
    """A chunk name as a file name (letters, digits, ``.``, ``-``, ``_``, ``=``)."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", name)


__all__ = ["Terminated", "sigterm_as_interrupt", "Checkpoint", "CorruptChunkWarning", "CorruptResultWarning", "reuse_or_compute", "NO_CHECKPOINT", "NoCheckpoint", "as_checkpoint",
           "kept_in", "lock_path", "waiting_lock"]
