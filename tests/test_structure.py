"""The package's structure: its layers, no import cycles, no repeated code, a wheel that works.

* the import-linter contracts of pyproject.toml (``[tool.importlinter]``) are kept;
* no import cycle inside ``nnkit``, counting imports made inside functions (an AST walk of
  every module, independent of import-linter);
* no block of six or more lines stands again in another file of ``nnkit/``;
* the wheel builds from the sources alone, installs into a fresh venv and every module of the
  installed copy imports.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tokenize
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnkit"
#: Generated code, not ours to structure (protoc writes it).
GENERATED = {PACKAGE / "proto" / "nnkit_pb2.py", PACKAGE / "proto" / "caffe_import_pb2.py"}
MIN_REPEATED_LINES = 6


# -- the import-linter contracts ---------------------------------------------------------------

def test_import_contracts_are_kept():
    """`lint-imports` at the repository root: every contract of pyproject.toml is kept."""
    try:
        import importlinter  # noqa: F401
    except ImportError:  # a failure, not a skip: CI would pass without looking
        pytest.fail("import-linter is missing: it is in the test extra, pip install -e '.[test]'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"  # one contract a line in the report
    # importlinter.cli has no __main__: call its click command the way the lint-imports script does.
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, "import-linter contracts broken:\n" + report
    assert "0 broken" in report and "nnkit's layers" in report, report  # the contracts were read


# -- the module graph, read from the sources ---------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_modules() -> dict[str, Path]:
    """Every module of the package by dotted name: .py files, and .pyx kernels (leaves)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            modules.setdefault(_module_name(path), path)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom anywhere (module level, functions, classes, try blocks), except
    under ``if TYPE_CHECKING:``, whose imports never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


_PYX_IMPORT = re.compile(r"^\s*(?:from\s+(?P<base>\.*[\w.]*)\s+import\s+(?P<names>[^#]+)"
                         r"|import\s+(?P<plain>[\w., ]+))", re.M)


def _pyx_imports(text: str):
    """(level, module, names, line) of a Cython file's Python imports; cimports are C-level."""
    for m in _PYX_IMPORT.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group("plain"):
            for name in m.group("plain").split(","):
                yield 0, name.split(" as ")[0].strip(), None, line
        else:
            base = m.group("base")
            level = len(base) - len(base.lstrip("."))
            names = [n.split(" as ")[0].strip(" ()\\") for n in m.group("names").split(",")]
            yield level, base.lstrip(".") or None, [n for n in names if n], line


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if not level:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, dict[str, list[int]]]:
    """importer -> {imported: [line, ...]} for the imports between the package's modules.

    ``import a.b`` and ``from a import b`` (b a module) import ``a.b``; ``from a import name``
    imports ``a`` (a package: its ``__init__``). Importing a submodule is not counted as
    importing its parent package, so ``from . import control`` in ``nnkit/training/run.py``
    is the edge ``nnkit.training.run -> nnkit.training.control``, not one to ``nnkit.training``.
    """
    modules = _source_modules()
    graph: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in modules}

    def known(name: str) -> str | None:  # the longest prefix that is one of our modules
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for importer, path in modules.items():
        is_package = path.stem == "__init__"
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".pyx":
            found = list(_pyx_imports(text))
        else:
            found = []
            for node in _import_nodes(ast.parse(text, str(path))):
                if isinstance(node, ast.Import):
                    found += [(0, alias.name, None, node.lineno) for alias in node.names]
                else:
                    found.append((node.level, node.module, [a.name for a in node.names], node.lineno))
        for level, module, names, line in found:
            base = _resolve(importer, is_package, level, module)
            targets = ([base] if names is None
                       else [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names])
            for target in targets:
                target = known(target)
                if target and target != importer:
                    graph[importer][target].append(line)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def test_graph_sees_function_level_and_relative_imports():
    """The walk that the cycle test relies on finds what it must (so an empty answer means something)."""
    graph = import_graph()
    assert "nnkit._kernels.pooling" in graph["nnkit.layers.pooling"]  # from .._kernels import pooling
    assert "nnkit.views.tensorboard" in graph["nnkit.cli"]  # inside a function
    assert "nnkit.layers.base" in graph["nnkit.checkpoint"]  # inside a function, not the TYPE_CHECKING one
    assert "nnkit.training.trainer" not in graph["nnkit.training.callbacks"]  # TYPE_CHECKING only
    assert "nnkit.training" in graph["nnkit.model"]  # from .training import Callback: the package
    assert "nnkit.model" in graph["nnkit.config"]  # from .. import model as _model: the module
    cycle = {"a": {"b": [1]}, "b": {"c": [1]}, "c": {"a": [1]}, "d": {"a": [1]}}
    assert sorted(map(len, strongly_connected(cycle))) == [1, 3]


def _shortest_cycle(graph: dict[str, dict[str, list[int]]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module (a breadth-first walk)."""
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node]):
            if child == start:
                return paths[node] + [start]
            if child in component and child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return component


def test_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    lines = []
    for component in cycles:
        lines.append("cycle among " + ", ".join(component))
        lines.append("  e.g. " + " -> ".join(_shortest_cycle(graph, component)))
        for importer in component:
            path = _source_modules()[importer].relative_to(ROOT)
            for imported, at in sorted(graph[importer].items()):
                if imported in component:
                    lines.append(f"  {path}:{','.join(map(str, sorted(set(at))))}: {importer} -> {imported}")
    assert not cycles, "import cycles inside nnkit:\n" + "\n".join(lines)


# -- repeated blocks ---------------------------------------------------------------------------

_TRIVIAL = re.compile(r"^(?:[)\]}]+[,:]?|[)\]}]*\)\s*(?:->.*)?:|pass|else:|try:|finally:|return|break|continue"
                      r"|\.\.\.|\"\"\"|''')$")
_IMPORT_LINE = re.compile(r"^(?:from\s+\S+\s+c?import\b|c?import\s)")


def _comment_free_lines(path: Path, text: str) -> list[str]:
    """The file's lines with comments removed (by tokenize; a naive cut for what it cannot read)."""
    lines = text.splitlines()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                row, col = token.start
                lines[row - 1] = lines[row - 1][:col]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        lines = [re.sub(r"^\s*#.*", "", line) for line in lines]
    return lines


def _import_rows(path: Path, text: str) -> set[int]:
    """Line numbers that belong to import statements (all the lines of a parenthesised one)."""
    if path.suffix != ".py":
        return set()
    rows = set()
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            rows.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return rows


def significant_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the lines that count: white space folded; blank,
    comment-only, lone-punctuation, keyword-only and import lines left out."""
    text = path.read_text(encoding="utf-8")
    imports = _import_rows(path, text)
    out = []
    for row, line in enumerate(_comment_free_lines(path, text), start=1):
        line = " ".join(line.split())
        if not line or row in imports or _TRIVIAL.match(line) or _IMPORT_LINE.match(line):
            continue
        out.append((row, line))
    return out


def repeated_blocks(files: list[Path], size: int = MIN_REPEATED_LINES) -> list[tuple[str, ...]]:
    """Each run of ``size`` or more significant lines found again in another file, as
    ``("a.py:10-24", "b.py:40-54", ...)``: every place the run stands, maximal runs only."""
    lines = {path: significant_lines(path) for path in files}
    windows: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for path, rows in lines.items():
        texts = [t for _, t in rows]
        for i in range(len(texts) - size + 1):
            windows[tuple(texts[i:i + size])].append((path, i))
    # Pairs of files: the window starts they share, then consecutive starts merged into runs.
    shared: dict[tuple[Path, Path], set[tuple[int, int]]] = defaultdict(set)
    for places in windows.values():
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (pa, ia), (pb, ib) = sorted([places[a], places[b]])
                if pa != pb:
                    shared[pa, pb].add((ia, ib))
    blocks = set()
    for (pa, pb), starts in shared.items():
        for ia, ib in sorted(starts):
            if (ia - 1, ib - 1) in starts:
                continue  # inside a run already reported from its start
            n = 0
            while (ia + n + 1, ib + n + 1) in starts:
                n += 1
            span = []
            for path, i in ((pa, ia), (pb, ib)):
                first, last = lines[path][i][0], lines[path][i + n + size - 1][0]
                span.append(f"{path.relative_to(ROOT)}:{first}-{last}")
            blocks.add(tuple(span))
    return sorted(blocks)


def _package_sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*") if p.suffix in (".py", ".pyx")
                  and "__pycache__" not in p.parts and p not in GENERATED)


def test_repeated_blocks_finds_a_copy(tmp_path, monkeypatch):
    """The detector itself: a six-line copy is found across files, despite comments, white
    space and imports in between; a longer block is not there."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    steps = [f"total = total + {k} * weight" for k in range(6)]
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("def f(weight):\n    total = 0\n" + "".join(f"    {s}  # step\n" for s in steps)
                 + "    return total\n")
    b.write_text("import os\n\n\ndef g(weight):\n" + "".join(f"    {s}\n" for s in steps[:3])
                 + "\n    # the rest\n    import math\n" + "".join(f"    {s}\n" for s in steps[3:])
                 + "    return total\n")
    assert repeated_blocks([a, b]) == [("a.py:3-9", "b.py:5-14")]  # return total too
    assert repeated_blocks([a, b], size=8) == []


def test_no_repeated_blocks():
    blocks = repeated_blocks(_package_sources())
    assert not blocks, (f"blocks of {MIN_REPEATED_LINES}+ lines repeated across files of nnkit/ "
                        "(factor them out):\n" + "\n".join("  " + " ~ ".join(b) for b in blocks))


# -- the wheel ---------------------------------------------------------------------------------

#: Views whose optional dependencies may be missing (they import without them today, but the
#: installed-wheel check tolerates a missing third-party module there).
OPTIONAL_MODULES = {"nnkit.views.notebook", "nnkit.views.report", "nnkit.views.tensorboard",
                    "nnkit.ui.server"}

_IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import nnkit
    optional = set(sys.argv[1].split(","))
    files, skipped = {"nnkit": nnkit.__file__}, {}
    for info in pkgutil.walk_packages(nnkit.__path__, "nnkit."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as error:
            if info.name in optional and error.name and not error.name.startswith("nnkit"):
                skipped[info.name] = str(error)
                continue
            raise
        files[info.name] = module.__file__
    print(json.dumps({"files": files, "skipped": skipped, "prefix": sys.prefix}))
""")


def _build_requirements_met() -> bool:
    """Whether this interpreter has pyproject's build requirements, for an offline build."""
    try:
        import tomllib
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement
    except ImportError:
        return False
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, requires):
        try:
            if version(requirement.name) not in requirement.specifier:
                return False
        except PackageNotFoundError:
            if requirement.name != "wheel":  # setuptools>=70.1 builds wheels itself
                return False
    return True


@pytest.mark.slow  # compiles every kernel from scratch: about 100 s on two cores
def test_wheel_installs_and_every_module_imports(tmp_path):
    # Build from a copy of what the sdist would hold, so nothing built in place (the .so and .c
    # files, build/) can stand in for what the wheel should make.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "nnkit", ignore=shutil.ignore_patterns(
        "__pycache__", "*.so", "*.c", "*.html", "*.pyc", "*.egg-info"))
    offline = ["--no-build-isolation"] if _build_requirements_met() else []  # else pip fetches them
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-q",
                            "-w", str(wheels), str(source)],
                           cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("nnkit-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert sources - names == set(), "modules missing from the wheel"
    assert {n for n in names if n.endswith(".py")} - sources == set(), "the wheel holds stray modules"
    assert {"nnkit/config/__init__.py", "nnkit/views/__init__.py", "nnkit/training/__init__.py"} <= names
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    kernels = {f"nnkit/_kernels/{p.stem}{suffix}" for p in (PACKAGE / "_kernels").glob("*.pyx")}
    assert kernels and kernels <= names, sorted(kernels - names)

    # A fresh venv with the wheel alone in it; then, through a .pth of plain paths (no
    # editable-install hook runs), it sees this interpreter's site-packages after its own,
    # for numpy, h5py... without the network. The .pth comes after the install, so pip
    # cannot take an nnkit installed here for the one it should install there.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                              "--no-index", "--no-deps", str(wheel)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  env=env, check=True, capture_output=True, text=True).stdout.strip())
    assert (purelib / "nnkit" / "__init__.py").is_file(), sorted(p.name for p in purelib.iterdir())
    inherited = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (purelib / "zz_inherited.pth").write_text("".join(p + "\n" for p in sorted(inherited) if Path(p).is_dir()))

    run = subprocess.run([python, "-c", _IMPORT_ALL, ",".join(sorted(OPTIONAL_MODULES))],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert Path(found["prefix"]) == venv
    assert set(found["files"]) | set(found["skipped"]) == set(_source_modules())
    outside = {name: f for name, f in found["files"].items() if not Path(f).is_relative_to(purelib)}
    assert not outside, f"modules imported from outside the new venv: {outside}"

    cli = subprocess.run([venv / "bin" / "nnkit", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "usage" in cli.stdout.lower(), cli.stdout + cli.stderr
