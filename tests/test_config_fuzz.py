"""Config fuzz: mutated copies of the example jobs either show (exit 0) or are refused with a
config error (exit 2), never another exception, a hang, or an allocation without bound.

The mutations (seeded, so every run tries the same cases) delete, duplicate and swap lines,
replace numbers (0, -1, 1e308, nan, inf, huge ints, floats where ints go) and identifiers,
truncate, insert random bytes and bytes that are not UTF-8. Most cases run in this process
through ``nnkit.cli.main(["show", FILE])``, each under a time bound and an address-space
limit; a sample runs as real ``python -m nnkit.cli show FILE`` processes under an rlimit.

Memory: ``$NNKIT_MAX_MODEL_BYTES`` is what keeps a mutated model from allocating without
bound, so the cases run under a limit well inside the address-space one. The MNIST MLP
(12M parameters, about 140 MiB) takes a tenth of a second or more to draw its weights: most
of its mutations run under a limit below its size, which refuses it (exit 2) after every
other check has run; every fourth one builds in full, like all the CIFAR-10 CNN's.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nnkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {"mnist": ROOT / "examples" / "mnist_mlp.conf", "cifar": ROOT / "examples" / "cifar10_cnn.conf"}
SEED = 20240611
CASES_PER_EXAMPLE = 600
SUBPROCESS_SAMPLE = 30
CASE_SECONDS = 10          # in-process bound per case (a case takes milliseconds)
PROCESS_SECONDS = 120      # per subprocess (interpreter start included)
HEADROOM = 1536 * 2**20    # in-process address space allowed above what the process has
PROCESS_AS = 2 * 2**30     # RLIMIT_AS of the subprocesses
MODEL_LIMIT = str(256 * 2**20)  # $NNKIT_MAX_MODEL_BYTES: well inside both
SMALL_LIMIT = str(64 * 2**20)   # below the MLP's size: validated in full, refused unbuilt

NUMBERS = ["0", "-1", "1", "1e308", "-1e308", "nan", "-nan", "inf", "-inf", "2147483647",
           "2147483648", "-2147483648", "9223372036854775807", "99999999999999999999",
           "0.5", "1.5", "-0.0", "1e-320", "3", "1000000", "65536", "0x7fffffff"]
IDENTIFIERS = ["dense", "convolution", "max_pooling", "avg_pooling", "lrn", "activation",
               "dropout", "batch_norm", "image_input", "dummy", "layer", "model", "updater",
               "data", "run", "name", "seed", "w", "b", "init", "std", "kernel", "stride", "pad",
               "output_dim", "nb_filter", "size", "alpha", "beta", "k", "ratio", "momentum",
               "epsilon", "lr", "lr_type", "decay", "step", "step_lr", "gamma", "type", "relu",
               "softmax", "stanh", "linear", "adam", "sgd", "manual", "poly", "fixed", "true",
               "false", "input_shape", "metric", "loss", "euclideanloss", "dtype", "height",
               "width", "nb_channel", "mean_image", "mean_value", "scale", "batch_size", "limit",
               "epochs", "steps", "test_freq", "x", "_", "inf", "nan", "glorot_uniform"]
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d*)?(?:e-?\d+)?")
_WORD = re.compile(r"\b[A-Za-z_]\w*\b")


# ============================================================================ the mutations
def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\n".join(lines)


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"\n".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _replace_match(rng: random.Random, data: bytes, pattern: re.Pattern, pool: list[str]) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    matches = list(pattern.finditer(text))
    if not matches:
        return data
    m = rng.choice(matches)
    text = text[:m.start()] + rng.choice(pool) + text[m.end():]
    return text.encode("utf-8", "surrogateescape")


def replace_number(rng: random.Random, data: bytes) -> bytes:
    return _replace_match(rng, data, _NUMBER, NUMBERS)


def replace_identifier(rng: random.Random, data: bytes) -> bytes:
    return _replace_match(rng, data, _WORD, IDENTIFIERS)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    """Random bytes, mostly ASCII (any byte above 0x7f makes the file not UTF-8 at once)."""
    at = rng.randrange(len(data) + 1)
    top = 256 if rng.random() < 0.25 else 128
    return data[:at] + bytes(rng.randrange(top) for _ in range(rng.randint(1, 8))) + data[at:]


def not_utf8(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"])
    return data[:at] + bad + data[at:]


MUTATIONS = [delete_line, duplicate_line, swap_lines, replace_number, replace_number,
             replace_number, replace_identifier, replace_identifier, truncate, insert_bytes,
             not_utf8]


@dataclass
class Case:
    """One mutated config: its example, what was done to it, its bytes."""

    index: int
    example: str
    steps: list[str]
    data: bytes

    @property
    def name(self) -> str:
        return f"{self.index:04d}-{self.example}-{'+'.join(self.steps)}.conf"

    def model_limit(self) -> str:
        """$NNKIT_MAX_MODEL_BYTES for this case (see the module docstring)."""
        return SMALL_LIMIT if self.example == "mnist" and self.index % 8 else MODEL_LIMIT


def make_cases() -> list[Case]:
    """The same cases every run: 1 to 3 mutations of each example, seeded."""
    rng = random.Random(SEED)
    sources = {name: path.read_bytes() for name, path in EXAMPLES.items()}
    cases = []
    for i in range(CASES_PER_EXAMPLE * len(sources)):
        example = ("mnist", "cifar")[i % 2]
        data, steps = sources[example], []
        for _ in range(rng.choice((1, 1, 2, 3))):
            mutation = rng.choice(MUTATIONS)
            data = mutation(rng, data)
            steps.append(mutation.__name__)
        cases.append(Case(i, example, steps, data))
    return cases


# ============================================================================== in process
class CaseTimeout(BaseException):
    """Raised by the timer: a BaseException, so main()'s ``except Exception`` cannot hide it."""


@contextlib.contextmanager
def address_space_limit(headroom: int):
    """Lowers this process's RLIMIT_AS to its current size plus ``headroom``, then restores it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    limit = size + headroom if hard == resource.RLIM_INFINITY else min(hard, size + headroom)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _on_alarm(signum, frame):
    raise CaseTimeout()


def show_in_process(path: Path) -> tuple[int | str, str]:
    """(exit status of ``nnkit show PATH``, stderr), or ('timeout', ...) past CASE_SECONDS."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status: int | str = main(["show", str(path)])
    except CaseTimeout:
        status = "timeout"
    except (Exception, SystemExit) as e:  # noqa: BLE001  (reported as the case's failure)
        status = f"raised {type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return status, err.getvalue()


def held(status: int | str, stderr: str) -> bool:
    """Exit 0, or exit 2 with a one-line ``error:`` message and no traceback."""
    if "Traceback" in stderr:
        return False
    return status == 0 or (status == 2 and "error:" in stderr)


def test_mutated_example_configs_show_or_fail_with_a_config_error(tmp_path, monkeypatch, capsys):
    cases = make_cases()
    assert len(cases) >= 1000
    failures, statuses = [], {0: 0, 2: 0}
    start = time.perf_counter()
    with address_space_limit(HEADROOM):
        for case in cases:
            path = tmp_path / case.name
            path.write_bytes(case.data)
            monkeypatch.setenv("NNKIT_MAX_MODEL_BYTES", case.model_limit())
            status, stderr = show_in_process(path)
            if held(status, stderr):
                statuses[status] += 1
            else:
                failures.append(f"{case.name}: {status}: {stderr[-600:]}")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nconfig fuzz, in process: {len(cases)} tried, {len(cases) - len(failures)} held "
              f"({statuses[0]} shown, {statuses[2]} refused), {seconds:.1f} s")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:20])


# ============================================================================== processes
def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (PROCESS_AS, PROCESS_AS))


def show_in_subprocess(path: Path, limit: str) -> subprocess.CompletedProcess | str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNKIT_MAX_MODEL_BYTES": limit,
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}  # thread stacks: address space
    try:
        return subprocess.run([sys.executable, "-m", "nnkit.cli", "show", str(path)],
                              capture_output=True, text=True, errors="replace", env=env,
                              timeout=PROCESS_SECONDS, preexec_fn=_limit_address_space)
    except subprocess.TimeoutExpired:
        return "timeout"


def test_a_sample_of_mutated_configs_in_real_processes(tmp_path, capsys):
    cases = make_cases()
    rng = random.Random(SEED + 1)
    sample = rng.sample(cases, SUBPROCESS_SAMPLE - 3)
    # ... and at least one of the kinds a process shows best: bytes that are not UTF-8, and
    # an MLP that builds in full.
    sample += [next(c for c in cases if "not_utf8" in c.steps),
               next(c for c in cases if c.steps == ["insert_bytes"]),
               next(c for c in cases if c.example == "mnist" and c.model_limit() == MODEL_LIMIT)]
    paths = []
    for case in sample:
        paths.append(tmp_path / case.name)
        paths[-1].write_bytes(case.data)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(show_in_subprocess, paths, [c.model_limit() for c in sample]))
    seconds = time.perf_counter() - start
    failures = []
    for case, done in zip(sample, results):
        if done == "timeout":
            failures.append(f"{case.name}: no exit within {PROCESS_SECONDS} s")
        elif done.returncode not in (0, 2) or "Traceback" in done.stderr:
            failures.append(f"{case.name}: exit {done.returncode}: {done.stderr[-600:]}")
    with capsys.disabled():
        print(f"\nconfig fuzz, processes: {len(sample)} tried, {len(sample) - len(failures)} "
              f"held, {seconds:.1f} s")
    assert not failures, "\n".join(failures)
