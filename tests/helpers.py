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


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>.py`` (with examples/ on the path for its own imports)."""
    sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
