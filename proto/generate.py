"""Regenerates the committed protobuf modules of nnkit/proto/ from proto/*.proto, or checks them.

    python proto/generate.py           # rewrite the committed modules
    python proto/generate.py --check   # exit 1 if a committed module is stale

Two schemas: ``proto/nnkit.proto`` (jobs, -> ``nnkit/proto/nnkit_pb2.py``) and
``proto/caffe_import.proto`` (the Caffe subset ``nnkit import-caffe`` reads, ->
``nnkit/proto/caffe_import_pb2.py``).

The module is committed so that ``pip install .`` needs no protoc; protoc comes from
``grpcio-tools`` (``pip install grpcio-tools``), used only here and in the staleness test.
Staleness is judged on the schema itself (the serialized FileDescriptorProto embedded in the
module), not on the text protoc emits, so a different protoc version is not "stale".
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "nnkit.proto"
MODULE = ROOT / "nnkit" / "proto" / "nnkit_pb2.py"
CAFFE_PROTO = ROOT / "proto" / "caffe_import.proto"
CAFFE_MODULE = ROOT / "nnkit" / "proto" / "caffe_import_pb2.py"
#: Every schema and the module generated from it.
SCHEMAS = ((PROTO, MODULE), (CAFFE_PROTO, CAFFE_MODULE))


def run_protoc(out_dir: Path, proto: Path = PROTO) -> Path:
    """Compiles the schema ``proto`` into ``out_dir``; returns the generated module's path."""
    if importlib.util.find_spec("grpc_tools") is None:
        raise SystemExit("proto/generate.py needs protoc: pip install grpcio-tools")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}",
           f"--python_out={out_dir}", proto.name]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"protoc failed:\n{done.stderr}")
    return out_dir / f"{proto.stem}_pb2.py"


def schema_of(module_path: Path) -> bytes:
    """The schema a generated module embeds: its serialized FileDescriptorProto, canonicalized.

    Read from the source with ``ast`` (the argument of ``AddSerializedFile``), without
    importing the module, so a stale and a fresh module can be compared in one process.
    """
    from google.protobuf import descriptor_pb2

    tree = ast.parse(module_path.read_text(), str(module_path))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, bytes)):
            fdp = descriptor_pb2.FileDescriptorProto.FromString(node.args[0].value)
            return fdp.SerializeToString(deterministic=True)
    raise SystemExit(f"{module_path} embeds no schema: is it a generated module?")


def is_current() -> tuple[bool, str]:
    """(True, "") if every committed module matches its schema, else (False, why)."""
    for proto, module in SCHEMAS:
        if not module.exists():
            return False, f"{module} does not exist"
        with tempfile.TemporaryDirectory() as tmp:
            fresh = run_protoc(Path(tmp), proto)
            if schema_of(fresh) != schema_of(module):
                return False, (f"{module.relative_to(ROOT)} is stale against "
                               f"{proto.relative_to(ROOT)}: run python proto/generate.py")
    return True, ""


def generate() -> None:
    """Writes every generated module in place (each atomically)."""
    for proto, module in SCHEMAS:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = run_protoc(Path(tmp), proto)
            module.parent.mkdir(parents=True, exist_ok=True)
            staged = module.with_suffix(".py.tmp")
            staged.write_bytes(fresh.read_bytes())
            os.replace(staged, module)


def main(argv: list[str] | None = None) -> int:
    """Command line: regenerate, or ``--check`` (exit status 1 when stale)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        ok, why = is_current()
        print("up to date" if ok else why, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    generate()
    print("wrote " + ", ".join(str(module.relative_to(ROOT)) for _, module in SCHEMAS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
