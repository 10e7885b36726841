"""Every code block in README.md is executed or checked, so the docs cannot rot.

Python blocks run in order, as one script (a later block sees an earlier one's names), in a
fresh temporary folder, with the data folder and ``examples/`` pointed at the real ones. An
HTML comment right before a block steers it (invisible on the rendered page):

* ``<!-- readme-test: replace `OLD` with `NEW` -->`` substitutes text in that block before it
  runs, for small sizes (fewer examples or epochs) where the README shows a full run;
* ``<!-- readme-test: new-script -->`` starts a new script for that block and the ones after it
  (a block that starts a child process, which imports its script again);
* ``<!-- readme-test: syntax-only -->`` compiles the block without running it.

Shell blocks are checked, not run: every ``nnkit ...`` command must parse with the real
argument parser (``<placeholder>`` paths allowed; also after ``mpiexec -n N``), every ``python examples/X.py`` flag
must be one the example's ``--help`` lists, and every ``dask scheduler|worker`` flag one of dask's. (README's test command is what CI runs itself.)
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nnkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA = ROOT.parent / "shared" / "data"

_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!-- readme-test: (.*) -->\s*$")
_REPLACE = re.compile(r"replace `(.+)` with `(.+)`")


@dataclass
class Block:
    """One fenced code block of the README with the directives just before it."""

    language: str
    code: str
    line: int
    directives: list[str] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, in order, with their ``readme-test`` directives."""
    blocks: list[Block] = []
    pending: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        fence = _FENCE.match(lines[i])
        if directive:
            pending.append(directive.group(1).strip())
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1, pending))
            pending = []
            i = end
        elif lines[i].strip():
            pending = []  # a directive applies only to the block right after it
        i += 1
    return blocks


def prepared(block: Block) -> str:
    """A block's code with its replacements and the paths of this checkout applied."""
    code = block.code
    for directive in block.directives:
        m = _REPLACE.fullmatch(directive)
        if m:
            assert m.group(1) in code, f"README.md:{block.line}: nothing to replace: {m.group(1)!r}"
            code = code.replace(m.group(1), m.group(2))
        else:
            assert directive in ("new-script", "syntax-only"), f"README.md:{block.line}: {directive!r}"
    return code.replace('"../shared/data"', repr(str(DATA))).replace('"examples/', f'"{ROOT}/examples/')


def python_scripts(blocks: list[Block]) -> list[tuple[int, str]]:
    """The scripts to run: consecutive Python blocks, split where ``new-script`` says."""
    scripts: list[tuple[int, list[str]]] = []
    for block in blocks:
        if block.language != "python":
            continue
        code = prepared(block)
        if "syntax-only" in block.directives:
            compile(code, f"README.md:{block.line}", "exec")
            continue
        if not scripts or "new-script" in block.directives:
            scripts.append((block.line, []))
        scripts[-1][1].append(f"# README.md:{block.line}\n{code}")
    return [(line, "\n".join(parts)) for line, parts in scripts]


BLOCKS = readme_blocks(README.read_text())
SCRIPTS = python_scripts(BLOCKS)


def test_the_readme_has_python_and_shell_blocks_and_every_directive_parses():
    assert len(SCRIPTS) >= 2 and any(b.language == "bash" for b in BLOCKS)


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data (real MNIST) is not beside the checkout")
@pytest.mark.parametrize("line,script", SCRIPTS, ids=[f"README.md:{line}" for line, _ in SCRIPTS])
def test_python_blocks_run(line: int, script: str, tmp_path: Path) -> None:
    path = tmp_path / "readme_script.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"README.md:{line}: the script failed:\n{done.stderr[-4000:]}"


def _shell_commands(block: Block) -> list[list[str]]:
    """The commands of a shell block: one per line, split at ``&&``, comments dropped."""
    commands = []
    for raw in block.code.splitlines():
        line = raw.split(" #")[0].strip()
        for part in filter(None, (p.strip() for p in line.split("&&"))):
            commands.append(shlex.split(part))
    return commands


def _example_flags(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _dask_flags(command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dask", command, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_shell_blocks_use_real_commands_and_flags():
    parser = build_parser()
    helps: dict[str, str] = {}
    checked = 0
    for block in BLOCKS:
        if block.language != "bash":
            continue
        for argv in _shell_commands(block):
            where = f"README.md:{block.line}: {' '.join(argv)}"
            if argv[0] == "mpiexec":  # the launcher's one flag README uses, then a command checked below
                assert argv[1] == "-n" and argv[2].isdigit(), f"{where}: mpiexec -n N <command>"
                argv = argv[3:]
            if argv[0] == "nnkit":
                args = [re.sub(r"<[^>]+>", "X", a) for a in argv[1:]]
                try:
                    parser.parse_args(args)
                except SystemExit as e:
                    pytest.fail(f"{where}: the nnkit parser refuses it (exit {e.code})")
                checked += 1
            elif argv[0] == "dask" and importlib.util.find_spec("distributed") is not None:
                text = helps.setdefault(f"dask {argv[1]}", _dask_flags(argv[1]))  # the dask extra's CLIs
                for flag in (a for a in argv[2:] if a.startswith("--")):
                    assert flag in text, f"{where}: dask {argv[1]} has no flag {flag}"
                checked += 1
            elif argv[0] in ("python", "python3") and argv[1:2] and argv[1].startswith("examples/"):
                text = helps.setdefault(argv[1], _example_flags(argv[1]))
                for flag in (a for a in argv[2:] if a.startswith("--")):
                    assert flag in text, f"{where}: {argv[1]} has no flag {flag}"
                checked += 1
    assert checked >= 8  # the CLI tour, the steering commands and the two README commands
