"""The checkpoint files of a run directory: their names, the latest one, rotation, reuse.

A run directory holds, besides ``job.conf``, ``events.jsonl`` and ``metrics.json``:

* ``checkpoint-<step>.h5``: the run's checkpoints, named by the global step when written
  (``nnkit train``, the examples, or a Trainer with ``keep_checkpoints`` set). Only the newest
  ``keep_checkpoints`` (default :data:`DEFAULT_KEEP`) stay; writing one also removes those with
  a higher step, left by a run this one branched off from (a resume of an earlier checkpoint).
* ``best-<step>.h5``: what ``ModelCheckpoint(save_best_only=True)`` without a file path writes;
  kept apart and never rotated away.
* ``checkpoint.h5``: the one checkpoint of ``fit(run_dir=...)`` from Python (no rotation) and
  of every run before checkpoints carried their step; still found and loaded.
* ``latest``: one line, the file name of the checkpoint written last. It is written
  atomically right after that checkpoint, so it never names a half-written file; no symlink
  is involved.

:func:`latest_checkpoint` is the one rule for "the checkpoint to continue from": the file
``latest`` names if it exists, else the highest step, else ``checkpoint.h5``. A run directory
given where a checkpoint is expected (``nnkit eval RUN_DIR``, ``--resume RUN_DIR``) means
that one (:func:`resolve_checkpoint`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from .events import EVENTS_FILE

STEP_NAME = "checkpoint-{step}.h5"
BEST_NAME = "best-{step}.h5"
LEGACY_NAME = "checkpoint.h5"
LATEST_FILE = "latest"
DEFAULT_KEEP = 3

_STEP_FILE = re.compile(r"checkpoint-(\d+)\.h5")
_BEST_FILE = re.compile(r"best-(\d+)\.h5")

#: How to go on, in the words of the flags ``nnkit train`` and the examples share.
FLAG_CHOICES = ("continue it with --resume auto, start over with --overwrite (deletes them), "
                "or choose another --run-dir")
#: The same for ``fit(run_dir=...)`` from Python.
PYTHON_CHOICES = ("continue it with fit(..., resume='auto'), delete them with "
                  "nnkit.training.checkpoints.clear_run_dir(run_dir), or choose another run_dir")


class RunDirectoryInUse(ValueError):
    """A new run was pointed at a run directory holding another run's checkpoints."""


def _stepped(run_dir: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """``(step, path)`` of the files of ``run_dir`` whose name matches ``pattern``, by step."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), run_dir / m.group(0))
             for m in map(pattern.fullmatch, os.listdir(run_dir)) if m]
    return sorted(found)


def step_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The rotating ``checkpoint-<step>.h5`` files of ``run_dir`` as ``(step, path)``, oldest first."""
    return _stepped(Path(run_dir), _STEP_FILE)


def run_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint of ``run_dir`` under nnkit's names: the stepped ones by step, the
    best-only ones by step, ``checkpoint.h5``, and whatever ``latest`` names."""
    run_dir = Path(run_dir)
    found = [path for pattern in (_STEP_FILE, _BEST_FILE) for _, path in _stepped(run_dir, pattern)]
    for extra in (run_dir / LEGACY_NAME, _named_latest(run_dir)):
        if extra is not None and extra not in found and extra.is_file():
            found.append(extra)
    return found


def _named_latest(run_dir: Path) -> Path | None:
    """The file the ``latest`` pointer names (None without a usable pointer)."""
    try:
        name = (run_dir / LATEST_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name or os.path.basename(name) != name or name in (".", ".."):
        return None  # only a file of the run directory itself, never a path out of it
    return run_dir / name


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to continue ``run_dir`` from, or None if it holds none.

    The file named by ``latest``; without one (or if it is gone) the highest step among the
    ``checkpoint-<step>.h5`` and ``best-<step>.h5`` files; else ``checkpoint.h5``.
    """
    run_dir = Path(run_dir)
    named = _named_latest(run_dir)
    if named is not None and named.is_file():
        return named
    # On a tie the rotating file wins: both hold the same state, and it is the usual name.
    stepped = [(step, 1, path) for step, path in _stepped(run_dir, _BEST_FILE)]
    stepped += [(step, 2, path) for step, path in _stepped(run_dir, _STEP_FILE)]
    if stepped:
        return max(stepped)[2]
    legacy = run_dir / LEGACY_NAME
    return legacy if legacy.is_file() else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a run directory its :func:`latest_checkpoint`.

    Raises FileNotFoundError for a directory without checkpoints (a missing file is left to
    the reader, whose error names it).
    """
    path = Path(path)
    if not path.is_dir():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{path}: a directory without checkpoints (no checkpoint-<step>.h5, "
                                f"{LEGACY_NAME} or {LATEST_FILE} file)")
    return found


def run_checkpoint_path(run_dir: str | os.PathLike, step: int, keep: int | None) -> Path:
    """Where the run directory's checkpoint at ``step`` goes: ``checkpoint-<step>.h5`` when
    rotating (``keep`` set), else the single ``checkpoint.h5``."""
    return Path(run_dir) / (LEGACY_NAME if keep is None else STEP_NAME.format(step=int(step)))


def best_checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a best-only checkpoint at ``step`` goes (never rotated away)."""
    return Path(run_dir) / BEST_NAME.format(step=int(step))


def record_checkpoint(run_dir: str | os.PathLike, path: str | os.PathLike, keep: int | None = None) -> None:
    """After ``path`` (a file of ``run_dir``) was written: makes it ``latest``; with ``keep``,
    rotates the stepped checkpoints (see the module docstring)."""
    if keep is not None and keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1 (or None), got {keep}")
    run_dir, path = Path(run_dir), Path(path)
    from .. import checkpoint  # h5py: imported only by a writer, not by nnkit ctl/watch
    checkpoint.atomic_write(run_dir / LATEST_FILE, path.name + "\n")
    m = _STEP_FILE.fullmatch(path.name)
    if keep is None or m is None:
        return
    step = int(m.group(1))
    stepped = step_checkpoints(run_dir)
    older = [p for s, p in stepped if s < step]
    # Files past this step belong to a continuation this run replaces; the oldest go too.
    doomed = [p for s, p in stepped if s > step] + older[:max(0, len(older) - (keep - 1))]
    for stale in doomed:
        stale.unlink(missing_ok=True)


def clear_run_dir(run_dir: str | os.PathLike, also: Iterable[str] = (EVENTS_FILE,)) -> list[Path]:
    """Deletes the checkpoints of ``run_dir`` (every :func:`run_checkpoints` file and ``latest``)
    and the files named in ``also`` (by default the old run's ``events.jsonl``, so a new run's
    log does not continue another's); returns what was deleted. Other files stay."""
    run_dir = Path(run_dir)
    # The pointer first: a crash half-way leaves checkpoints without one, never a dangling one.
    doomed = [run_dir / LATEST_FILE, *run_checkpoints(run_dir), *(run_dir / name for name in also)]
    removed = []
    for path in doomed:
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def check_run_dir(run_dir: str | os.PathLike | None, resume: str | os.PathLike | None,
                  overwrite: bool = False, choices: str = PYTHON_CHOICES) -> Path | None:
    """What a run about to start in ``run_dir`` continues from; refuses another run's files.

    ``resume='auto'``: the directory's :func:`latest_checkpoint` (None: a fresh start).
    ``resume=path``: that checkpoint (a run directory: its latest). ``overwrite``: None (the
    caller clears the directory once it is sure to start, :func:`clear_run_dir`). Otherwise a
    directory holding checkpoints raises :class:`RunDirectoryInUse`, naming them and
    ``choices`` (how to go on).
    """
    if resume == "auto":
        if run_dir is None:
            raise ValueError("resume='auto' continues the checkpoints of a run directory: give run_dir")
        return latest_checkpoint(run_dir)
    if resume is not None:
        return resolve_checkpoint(resume)
    found = [] if run_dir is None or overwrite else run_checkpoints(run_dir)
    if found:
        names = ", ".join(p.name for p in found)
        raise RunDirectoryInUse(f"{run_dir} holds the checkpoints of an earlier run ({names}); {choices}")
    return None
