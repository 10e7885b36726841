"""What a run directory says about its run, for the store: the one reader of its files
(``events.jsonl``, ``job.conf``, ``run.json``), and the facts about the process and the job
that the recorder writes to ``run.json`` (owner, host, git commit, config text and hash).

``run.json`` is plain JSON, written atomically when a recorded run starts (and again when a
resumed run starts)::

    {"id": "3f2a9c1b7e4d", "name": "mnist", "owner": "ann", "tags": ["baseline"],
     "created": 1763690000.1, "host": "box", "pid": 4242, "nnkit_version": "0.4.0",
     "git_commit": "9c1e...", "config_text": "name: ...", "total_steps": 3000}

Nothing read from a run directory is trusted: a field of the wrong type is ignored.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ..training.events import EVENTS_FILE, read_jsonl
from .summary import RunSummary

RUN_FILE = "run.json"
JOB_FILE = "job.conf"  # what `nnkit train` writes: the job as run, overrides applied
GIT_TIMEOUT = 2.0


def default_owner() -> str:
    """The user name (``getpass.getuser()``), or ``"unknown"`` when the system has none."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  (no user database entry, no LOGNAME: not worth failing a run)
        return "unknown"


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The commit checked out where the user's code runs (``git rev-parse HEAD``), or None
    outside a repository, without git, or when git takes longer than a moment."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) in (40, 64) else None


def config_body(text: str) -> str:
    """A job config without its leading comment lines (``nnkit train``'s header names the
    source file and the overrides; the same job from elsewhere hashes the same)."""
    lines = text.splitlines()
    while lines and (lines[0].lstrip().startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines).strip() + "\n"


def config_hash(text: str | None) -> str | None:
    """The SHA-256 (hex, first 16 digits) of a job config's body, or None without one."""
    if not text:
        return None
    return hashlib.sha256(config_body(text).encode()).hexdigest()[:16]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def flatten_config(text: str | None) -> dict[str, str]:
    """A job config's set fields as ``{"updater.lr": "0.1", "model.layer.1.dense.output_dim": "32"}``.

    Repeated fields are numbered from 0; enums are their names. A text that is not a job
    config (an older schema) gives ``{}``: the record keeps the text, only ``--where`` misses it.
    """
    if not text:
        return {}
    from google.protobuf import text_format
    from google.protobuf.message import Message

    from ..proto import JobConf
    job = JobConf()
    try:
        text_format.Parse(text, job)
    except (text_format.ParseError, ValueError):
        return {}
    flat: dict[str, str] = {}

    def value_text(field: Any, value: Any) -> str:
        if field.enum_type is not None:
            return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number \
                else str(value)
        return _scalar(value)

    def walk(message: Message, prefix: str) -> None:
        for field, value in message.ListFields():
            name = prefix + field.name
            items = list(enumerate(value)) if field.is_repeated else [(None, value)]
            for index, item in items:
                key = name if index is None else f"{name}.{index}"
                if field.message_type is not None:
                    walk(item, key + ".")
                else:
                    flat[key] = value_text(field, item)
    walk(job, "")
    return flat


def _typed(info: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = info.get(key)
    if isinstance(value, bool) and kind is not bool:
        return None
    return value if isinstance(value, kind) else None


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run.json`` of a run directory as a dict ({} when missing or unreadable)."""
    try:
        info = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def read_run_dir(run_dir: str | os.PathLike) -> tuple[RunSummary, dict[str, str]]:
    """The summary and flattened config of the run in ``run_dir``, from its files alone.

    Raises ``ValueError`` for a path that is not a run directory (no ``events.jsonl``).
    """
    path = Path(run_dir).expanduser().resolve()
    events_path = path / EVENTS_FILE
    if not events_path.is_file():
        raise ValueError(f"{run_dir}: not an nnkit run directory (no {EVENTS_FILE})")
    info = read_run_info(path)
    items, _ = read_jsonl(events_path)
    events = [value for _, value in items if isinstance(value, dict)]
    first_id = next((e["run"] for e in events if isinstance(e.get("run"), str)), None)
    run_id = _typed(info, "id", str) or first_id or hashlib.sha256(str(path).encode()).hexdigest()[:12]
    summary = RunSummary(id=run_id, run_dir=str(path))
    for event in events:
        summary.apply(event)
    tags = info.get("tags")
    summary.tags = tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else ()
    summary.name = _typed(info, "name", str) or path.name
    summary.owner = _typed(info, "owner", str)
    times = [e["time"] for e in events if isinstance(e.get("time"), (int, float))]
    summary.created = _typed(info, "created", (int, float)) or (min(times) if times else None)
    for key in ("host", "nnkit_version", "git_commit"):
        setattr(summary, key, _typed(info, key, str))
    summary.pid = _typed(info, "pid", int)
    summary.total_steps = _typed(info, "total_steps", int)
    job_file = path / JOB_FILE
    text = None
    if job_file.is_file():
        try:
            text = job_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    summary.config_text = text or _typed(info, "config_text", str)
    summary.config_hash = config_hash(summary.config_text)
    return summary, flatten_config(summary.config_text)
