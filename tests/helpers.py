"""Small helpers shared by the test modules."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Polls ``predicate`` until it is true; raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.002)
    raise TimeoutError("condition not reached")


def run_events(run_dir: str | Path) -> list[dict]:
    """A run directory's events so far, as the run reads them: complete lines only (a live
    run may be half way through writing the last one), without the garbage line a killed
    writer leaves (a missing file has none)."""
    from nnkit.training.events import read_jsonl
    items, _ = read_jsonl(Path(run_dir, "events.jsonl"))
    return [value for _, value in items if not isinstance(value, ValueError)]


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` (with examples/ on the path for its own imports)."""
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
