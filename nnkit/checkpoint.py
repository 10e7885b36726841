"""HDF5 checkpoints: save and load nested "trees" of arrays and plain values, atomically.

A *tree* is a dict with string keys whose values are dicts again or leaves:

* numpy arrays of a numeric or bool dtype (any shape, 0-d and empty included) and numpy
  numeric scalars (``np.float32(0.5)``): stored bit-exactly with their dtype;
* ``None``, ``bool``, ``int`` (any size, e.g. ``Generator.bit_generator.state``), ``float``
  (NaN and infinities included), ``str``;
* lists and tuples of the above (lists of arrays, of dicts, nested lists...).

Tuples come back as lists; everything else comes back with its type (a numpy scalar as a
numpy scalar, a 0-d array as a 0-d array, dict order preserved).

File layout (inspect with ``h5dump -A file.h5`` or ``h5py``)::

    /                          group: the tree itself; attributes
                                 format         = kind, e.g. "nnkit.checkpoint"
                                 format_version = 1 (FORMAT_VERSION)
                                 nnkit_version  = "0.1.0" (the nnkit that wrote it)
                                 checksum       = "crc32": every object carries nnkit_crc32
                                 nnkit_type     = "dict"
                                 nnkit_crc32    = the root's checksum (see Integrity)
    /<key>                     one HDF5 object per dict entry, named by the escaped key;
                               every object carries an ``nnkit_crc32`` attribute and an
                               ``nnkit_type`` attribute:
        "dict"    group        a nested dict, entries in insertion order (track_order)
        "list"    group        a list or tuple holding arrays, numpy scalars or dicts; its
                               items are the objects named "0", "1", ...
        "array"   dataset      a numpy array, stored as is (dtype, shape, bytes)
        "scalar"  dataset      a numpy scalar, stored as a 0-d dataset
        "json"    dataset      any other leaf (None, bool, int, float, str, or a list of
                               those), as a 0-d fixed-length ASCII string holding JSON

Keys are escaped into HDF5 link names so that any string round-trips exactly: ``%``,
``/`` and NUL become ``%25``, ``%2F`` and ``%00``; the key ``"."`` becomes ``%2E`` and the
empty key ``""`` becomes a lone ``%``. A parameter named ``dense/weight`` is therefore
stored as ``/params/dense%2Fweight``; nothing else is changed.

Integrity: every object's ``nnkit_crc32`` (uint32) is the CRC-32 of what it means: for a
dataset its nnkit_type, dtype and shape, then its bytes (C order; a JSON leaf: its text); for
a group its nnkit_type, then each entry's link name and checksum in order. Loading recomputes
them, so a flipped bit in an array, a JSON value, a shape or dtype, a renamed, missing, extra or
reordered entry raises CheckpointError naming the file and the key. The checksums sit in
attributes rather than in HDF5's fletcher32 filter, which needs chunked storage (impossible for
0-d and empty arrays), covers neither dtype, shape, names nor JSON, and measured slower on the
96 MB MNIST MLP checkpoint (save 182 vs 174 ms, load 118 vs 102 ms; 137 and 82 ms unchecked):
CRC-32 costs about 25 ms per 100 MB each way, and storage stays contiguous, the one layout
the loader accepts. Files written before checksums existed (no ``checksum`` attribute) still
load; a :class:`UnverifiedCheckpointWarning`, issued before anything else is read, says that
damage cannot be detected. The layout is otherwise unchanged (attribute strings are now
fixed-length), so FORMAT_VERSION stays 1 and older nnkit versions read these files too.

Safety: loading never runs code from the file, never reads another file, and does work and
allocates memory in proportion to the file's size. It accepts only what save_tree writes:
the metadata is checked before any data is read (so a hostile file fails fast): each object
is reached by one hard link only (a DAG or a cycle of hard links is refused), nesting is at
most MAX_DEPTH, datasets are contiguous inside the file (external and virtual storage,
chunks and filters are refused), store every byte their dtype and shape declare, and no two
share bytes; datasets of object, variable-length, reference, opaque or compound dtype
(complex numbers aside), soft and external links, link names nnkit does not produce, JSON
objects and objects without a known ``nnkit_type`` are rejected. Attributes are checked for
type and size before they are read; unknown extra attributes are ignored. (The one exception
to the memory bound: in a file without checksums, whose attribute strings are variable-length,
HDF5 trusts their stored length; refuse such files with the warning made an error.) Values
are decoded with ``json`` (never pickle or eval). Anything else wrong is a CheckpointError
naming the file, never another exception.

Atomicity: a checkpoint is written to a temporary file in the destination directory
(``.<name>.<pid>.<random>.tmp``; its disk space claimed first, so that a full disk is a clean
``OSError(ENOSPC)`` before HDF5 writes anything), fsynced, renamed onto the destination with
``os.replace`` and the directory is fsynced. On any error the temporary file is removed and
an existing file at the destination is left untouched, so a crash or a full disk never leaves
a half-written checkpoint behind; the temporary file of a writer killed mid-save is removed
by :func:`remove_stale_temporaries` (which a Trainer calls for its run directory).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import operator
import os
import re
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5l, h5o, h5s, h5t

from ._version import __version__

if TYPE_CHECKING:  # the per-layer functions only read layer.params and names
    from .layers.base import Layer, Param

__all__ = ["FORMAT_VERSION", "CheckpointError", "CheckpointNotFoundError",  # noqa: RUF022
           "UnverifiedCheckpointWarning",
           "save_tree", "load_tree", "read_kind", "restoring", "save_model_parameter",
           "load_model_parameter",
           "atomic_path", "atomic_write", "remove_stale_temporaries"]

#: The layout version written by this code; files with a larger version are refused.
FORMAT_VERSION = 1
#: The kind of a general checkpoint (model, updater, trainer state...).
CHECKPOINT_KIND = "nnkit.checkpoint"
#: The kind written by :func:`save_model_parameter`.
PARAMETERS_KIND = "nnkit.parameters"

_TYPE = "nnkit_type"
_CRC = "nnkit_crc32"  # every object's checksum (see Integrity in the module docstring)
_CHECKSUM = "checksum"  # root attribute naming the algorithm; absent in files written before
_CRC_NAME = "crc32"
#: Deepest nesting of dicts and lists written or read (real trees nest about 5 levels); it
#: keeps a hostile file from exhausting the stack.
MAX_DEPTH = 100
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex
_PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: unsupported data, wrong or damaged file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint was loaded but has no checksums (written before nnkit added them), so
    damage to it could not be detected. Saving it again adds them."""


class _Invalid(Exception):
    """Internal: a problem inside a file; the public error adds the file path."""


# --------------------------------------------------------------------------- key escaping
_ESCAPED_CHARS = re.compile(r"[%/\x00]")
_ESCAPE_SEQUENCE = re.compile(r"%([0-9A-F]{2})")


def _escape_key(key: str) -> str:
    """The HDF5 link name of a dict key (see the module docstring); inverse of _unescape_key."""
    if key == "":
        return "%"  # a lone '%' never comes out of the general rule: every '%' is escaped
    if key == ".":
        return "%2E"  # HDF5 reads "." as the group itself
    return _ESCAPED_CHARS.sub(lambda m: f"%{ord(m.group()):02X}", key)


def _unescape_key(name: str) -> str:
    """The dict key of an HDF5 link name written by _escape_key."""
    if name == "%":
        return ""
    return _ESCAPE_SEQUENCE.sub(lambda m: chr(int(m.group(1), 16)), name)


# --------------------------------------------------------------------------- writing
def _is_numpy_number(value: Any) -> bool:
    return isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS


def _is_json_value(value: Any) -> bool:
    """True for values stored as one JSON string: plain scalars and lists of them."""
    if _is_numpy_number(value):
        return False  # kept as a 0-d dataset so its numpy type survives
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_is_json_value(v) for v in value)


def _keypath(parent: str, key: str) -> str:
    return f"{parent}/{key}" if parent else key


def _leaf_crc(kind: str, data: np.ndarray | bytes) -> int:
    """The checksum of a dataset: nnkit_type, dtype and shape, then the bytes (C order)."""
    if isinstance(data, bytes):  # a JSON leaf: the text is all there is
        return zlib.crc32(data, zlib.crc32(f"{kind}|".encode()))
    return zlib.crc32(data, zlib.crc32(f"{kind}|{data.dtype.str}|{data.shape}".encode()))


def _group_crc(kind: str, entries: Iterable[tuple[str, int]]) -> int:
    """The checksum of a group: nnkit_type, then each entry's link name and checksum in order."""
    crc = zlib.crc32(f"{kind}|".encode())
    for name, entry_crc in entries:  # NUL cannot occur in a link name (it is escaped)
        crc = zlib.crc32(name.encode("utf-8") + b"\0" + entry_crc.to_bytes(4, "little"), crc)
    return crc


class _Entry:
    """One object to write, checked, encoded and checksummed before the file is created."""

    __slots__ = ("name", "keypath", "kind", "data", "entries", "crc")

    def __init__(self, name: str, keypath: str, kind: str, data: np.ndarray | bytes | None,
                 entries: list[_Entry] | None = None) -> None:
        self.name, self.keypath, self.kind, self.data = name, keypath, kind, data
        self.entries = entries or []
        self.crc = (_leaf_crc(kind, data) if data is not None
                    else _group_crc(kind, ((e.name, e.crc) for e in self.entries)))


def _prepare(key: Any, value: Any, keypath: str, depth: int = 0) -> _Entry:
    """The entry for one tree value stored as ``key``; raises naming ``keypath``."""
    if not isinstance(key, str):
        raise CheckpointError(f"cannot save {keypath!r}: dict keys must be str, got "
                              f"{type(key).__name__} {key!r}")
    if depth > MAX_DEPTH:
        raise CheckpointError(f"cannot save {keypath!r}: nested deeper than {MAX_DEPTH} levels")
    name = _escape_key(key)
    if isinstance(value, Mapping):
        return _Entry(name, keypath, "dict", None, [
            _prepare(k, v, _keypath(keypath, str(k)), depth + 1) for k, v in value.items()])
    if isinstance(value, np.ndarray) or _is_numpy_number(value):
        data = np.asarray(value, order="C")  # the bytes the checksum covers are those h5py writes
        if data.dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(f"cannot save {keypath!r}: arrays of dtype {data.dtype} are not "
                                  f"supported (numeric or bool dtypes only)")
        return _Entry(name, keypath, "array" if isinstance(value, np.ndarray) else "scalar", data)
    if _is_json_value(value):
        try:
            text = json.dumps(value, ensure_ascii=True, allow_nan=True)
        except ValueError as e:  # e.g. an int with more digits than Python converts
            raise CheckpointError(f"cannot save {keypath!r}: {e}") from e
        return _Entry(name, keypath, "json", text.encode("ascii"))
    if isinstance(value, (list, tuple)):
        return _Entry(name, keypath, "list", None, [
            _prepare(str(i), item, f"{keypath}[{i}]", depth + 1) for i, item in enumerate(value)])
    raise CheckpointError(
        f"cannot save {keypath!r}: unsupported type {type(value).__module__}."
        f"{type(value).__qualname__} (supported: dict, list, tuple, numeric or bool numpy "
        f"arrays and scalars, None, bool, int, float, str)")


def _write_entry(group: h5py.Group, entry: _Entry) -> None:
    """Writes ``entry`` as the object ``entry.name`` of ``group`` (recursively for groups)."""
    if entry.data is None:
        obj = group.create_group(entry.name, track_order=True)
        for sub in entry.entries:
            _write_entry(obj, sub)
    elif entry.kind == "json":
        # Fixed-length ASCII, not a variable-length string: the loader can then refuse
        # every variable-length/object dtype outright.
        obj = group.create_dataset(entry.name, data=np.bytes_(entry.data))
    else:
        try:
            obj = group.create_dataset(entry.name, data=entry.data)
        except TypeError as e:  # a numeric dtype HDF5 has no type for
            raise CheckpointError(f"cannot save {entry.keypath!r}: dtype {entry.data.dtype}: "
                                  f"{e}") from e
    obj.attrs[_TYPE] = _fixed(entry.kind)
    obj.attrs[_CRC] = np.uint32(entry.crc)


def _fixed(text: str) -> np.bytes_:
    """A fixed-length string attribute value: the loader knows its size before reading it
    (HDF5 trusts a variable-length string's stored length and zeroes that many bytes)."""
    return np.bytes_(text.encode("utf-8"))


def _new_file_mode(path: str) -> int:
    """The permissions the checkpoint should get: those of the file it replaces, else the
    umask default (mkstemp creates 0600 files, which would hide checkpoints from a group)."""
    with contextlib.suppress(OSError):
        return os.stat(path).st_mode & 0o777
    umask = 0o022
    # Linux exposes the umask without the set-and-restore race of os.umask.
    with contextlib.suppress(OSError, ValueError), \
            open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


def _fsync_path(path: str) -> None:
    """fsyncs a file or (where the OS allows opening one) a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_kind(kind: Any) -> None:
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"kind must be a non-empty str, got {kind!r}")


_DISK_FULL = {errno.ENOSPC: re.compile(r"errno = 28\b|No space left on device"),
              errno.EDQUOT: re.compile(r"errno = 122\b|Disk quota exceeded")}


def _disk_full_errno(e: BaseException) -> int | None:
    """ENOSPC or EDQUOT if ``e`` says the disk (or quota) is full, else None."""
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
        return e.errno
    if isinstance(e, (OSError, RuntimeError)):
        return next((code for code, text in _DISK_FULL.items() if text.search(str(e))), None)
    return None


@contextlib.contextmanager
def atomic_path(path: _PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it becomes ``path`` atomically.

    The one way nnkit writes a file (checkpoints, job copies, metrics, plots): write to the
    yielded path, and on leaving the block the file is given its permissions (those of the
    file it replaces, else the umask default: one rule for every file of a run directory),
    fsynced, renamed onto ``path`` and the directory fsynced. On any error the temporary file
    is removed and an existing file at ``path`` is left untouched, so a crash or a full disk
    never leaves a half-written file behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    mode = _new_file_mode(path)
    # The writer's pid in the name tells remove_stale_temporaries whether the file is
    # still being written.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp",
                               dir=directory)
    os.close(fd)  # writers open it by name (h5py's native driver is faster than a file object)
    try:
        yield tmp
        os.chmod(tmp, mode)
        _fsync_path(tmp)  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        code = _disk_full_errno(e)
        if code is not None:  # h5py reports it as a RuntimeError or an OSError with HDF5's text
            full = OSError(code, f"{os.strerror(code)}: disk full, {path} was not written "
                                 f"(a previous file there is intact)", path)
            full.add_note(f"while writing {path}")
            raise full from e
        if isinstance(e, OSError):
            e.add_note(f"while writing {path}")
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        _fsync_path(directory)


#: A temporary file of atomic_path older than this (seconds since its last write) is stale
#: even if a process with its writer's pid is alive.
STALE_AFTER = 15 * 60.0
_TEMPORARY = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>[0-9]+)\.)?[a-z0-9_]{8}\.tmp")
_LOADED_AT = time.time()  # every temporary file this process writes is younger


def remove_stale_temporaries(directory: _PathLike | None, max_age: float = STALE_AFTER) -> list[str]:
    """Deletes the temporary files that writers killed mid-write left in ``directory``.

    :func:`atomic_path` names its temporary file ``.<name>.<pid>.<random>.tmp``. One is
    stale when that process is gone; when it is this process but the file predates it (the
    pid was reused, e.g. by a restarted container); when the process with that pid started
    after the file was last written (where ``/proc`` tells); or when the file was last
    written more than ``max_age`` seconds ago. Temporary files of nnkit versions that did
    not record the pid (``.<name>.<random>.tmp``) are stale by age only. A Trainer calls
    this for its run directory when it starts. Returns the paths removed; does nothing for
    None or a missing directory.
    """
    if directory is None:
        return []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete: leave it
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if (time.time() - mtime > max_age
                    or (match["pid"] is not None and _writer_gone(int(match["pid"]), mtime))):
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed


def _writer_gone(pid: int, mtime: float) -> bool:
    """True if process ``pid`` cannot be writing a temporary file last written at ``mtime``."""
    if pid == os.getpid():
        return mtime < _LOADED_AT - 2  # slack for coarse file system clocks
    if os.name != "posix" or pid <= 0:  # elsewhere os.kill(pid, 0) is not a harmless probe
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _process_start(pid)
    return started is not None and started > mtime + 2


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), read from /proc; else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name in (...) may hold spaces
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, IndexError, StopIteration, ValueError):
        return None


def atomic_write(path: _PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`: all or nothing."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def save_tree(path: _PathLike, tree: Mapping[str, Any], kind: str = CHECKPOINT_KIND) -> None:
    """Writes ``tree`` to the HDF5 file ``path`` atomically (see :func:`atomic_path`).

    Args:
        path: destination; its directory must exist. An existing file is replaced only once
            the new one is completely written and synced.
        tree: a dict of the values listed in the module docstring.
        kind: stored as the ``format`` attribute; :func:`load_tree` checks it.

    Raises:
        CheckpointError: an unsupported value (the message names its key path, e.g.
            ``'updater/slots/dense/weight'``); nothing is written then.
        OSError: the file system failed (disk full...); the previous file is untouched.
    """
    _check_kind(kind)
    if not isinstance(tree, Mapping):
        raise CheckpointError(f"a checkpoint tree must be a dict, got {type(tree).__name__}")
    try:
        root = _prepare("", tree, "")
    except RecursionError:  # a JSON list nested thousands deep
        raise CheckpointError("cannot save the tree: it is nested too deeply") from None
    with atomic_path(path) as tmp:
        _reserve(tmp, _estimated_size(root))
        with h5py.File(tmp, "r+") as f:
            _write_root(f, root, kind)


@functools.cache
def _empty_file_image() -> bytes:
    """An empty HDF5 file whose root group keeps insertion order, made in memory."""
    with h5py.File("empty.h5", "w", driver="core", backing_store=False, track_order=True) as f:
        f.flush()
        return f.id.get_file_image()


def _estimated_size(root: _Entry) -> int:
    """An upper bound of the size of the file save_tree writes for ``root``.

    HDF5 adds at most about 350 bytes of metadata per object plus about the length of its
    name (measured on flat, deep, many-small and long-name trees); this allows 1 KiB + 2x.
    """
    size, stack = 64 * 1024, [root]
    while stack:
        entry = stack.pop()
        size += 1024 + 2 * len(entry.name.encode("utf-8"))
        if isinstance(entry.data, bytes):
            size += len(entry.data)
        elif entry.data is not None:
            size += entry.data.nbytes
        stack.extend(entry.entries)
    return size


def _reserve(tmp: str, size: int) -> None:
    """Makes ``tmp`` an empty HDF5 file with ``size`` bytes of disk claimed for it.

    HDF5 cannot recover from a failed write: after a full disk its file stays half-closed,
    every object closed later prints an "Exception ignored" traceback and the library crashes
    when the process exits. So the space is claimed first, with calls that fail cleanly
    (ENOSPC before anything is written); HDF5 trims the file to its real end when it closes.
    """
    with open(tmp, "r+b") as f:
        f.write(_empty_file_image())
        f.flush()
        if hasattr(os, "posix_fallocate"):  # elsewhere HDF5 meets a full disk itself
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno in _DISK_FULL:
                    raise
                # EOPNOTSUPP, EINVAL...: the file system cannot claim space; write without


def _write_root(f: h5py.File, root: _Entry, kind: str) -> None:
    """Writes the root attributes and every entry of ``root`` into the open empty file."""
    f.attrs["format"] = _fixed(kind)
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["nnkit_version"] = _fixed(__version__)
    f.attrs[_CHECKSUM] = _fixed(_CRC_NAME)
    f.attrs[_TYPE] = _fixed("dict")
    for entry in root.entries:
        _write_entry(f, entry)
    f.attrs[_CRC] = np.uint32(root.crc)


# --------------------------------------------------------------------------- reading
# The reader works on h5py's low-level object ids: several times faster per object than the
# high-level classes, and every property is checked before anything is read.
_MAX_ATTR_STRING = 1024  # bytes; nnkit's attribute strings are a few dozen
_VLEN_STR = h5t.py_create(h5py.string_dtype())
_LAYOUTS = {h5d.COMPACT: "compact", h5d.CHUNKED: "chunked", h5d.VIRTUAL: "virtual"}
_LINKS = {h5l.TYPE_SOFT: "SoftLink", h5l.TYPE_EXTERNAL: "ExternalLink"}
_ObjectID = h5g.GroupID | h5d.DatasetID


def _attr(oid: _ObjectID, name: str, vlen: bool = False) -> str | int | None:
    """A scalar string or integer attribute, its type and size checked before it is read;
    None when absent or of any other type (arrays, floats, bools, long strings...).

    Variable-length strings are read only with ``vlen`` (files written before checksums
    have them): HDF5 trusts their stored length, allocating and zeroing up to 4 GiB for a
    damaged one before it fails. nnkit now writes fixed-length strings only.
    """
    key = name.encode()
    if not h5a.exists(oid, key):
        return None
    attr = h5a.open(oid, key)
    ftype = attr.get_type()
    kind = ftype.get_class()
    if attr.get_space().get_simple_extent_type() != h5s.SCALAR:
        return None
    if kind == h5t.INTEGER:
        number = np.zeros((), np.int64)
        attr.read(number, mtype=h5t.NATIVE_INT64)
        return int(number)
    if kind != h5t.STRING:
        return None
    if ftype.is_variable_str():
        if not vlen:
            return None
        text = np.zeros((), h5py.string_dtype())
        attr.read(text, mtype=_VLEN_STR)
    elif ftype.get_size() <= _MAX_ATTR_STRING:
        text = np.zeros((), f"S{ftype.get_size()}")
        attr.read(text, mtype=ftype)
    else:
        return None
    value = text[()]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else None


def _str_attr(oid: _ObjectID, name: str, vlen: bool = False) -> str | None:
    """A string attribute, or None when absent or not a (short) string (see _attr)."""
    value = _attr(oid, name, vlen)
    return value if isinstance(value, str) else None


def _shown(keypath: str) -> str:
    return repr(keypath) if keypath else "the root group"


class _Node:
    """One object found by _Reader.scan: checked, not read yet."""

    __slots__ = ("oid", "kind", "keypath", "crc", "entries", "shape", "dtype")

    def __init__(self, oid: _ObjectID, kind: str, keypath: str) -> None:
        self.oid, self.kind, self.keypath = oid, kind, keypath
        self.crc: int | None = None
        self.entries: list[tuple[str, _Node]] | None = None  # a group's, in order
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype | None = None


class _Reader:
    """Decodes the objects of one open file written by save_tree, in two passes.

    ``scan`` walks the metadata only and accepts nothing nnkit does not write: every object
    is reached once (hard links making a DAG or a cycle are refused before they multiply the
    work), nesting is bounded, datasets are contiguous inside the file (no external or
    virtual storage, no filters) and store every byte they declare, no two share bytes. So
    ``read`` then allocates at most the file's size and runs in time linear in it; it reads
    the data and verifies the checksums.
    """

    def __init__(self, file_size: int, legacy: bool) -> None:
        self.file_size = file_size
        self.legacy = legacy  # written before checksums: they are optional, strings vlen
        self._seen: set[int] = set()  # object header addresses
        self._extents: list[tuple[int, int, str]] = []  # (offset, size, key) of each array's bytes

    # ------------------------------------------------------------ pass 1: metadata
    def scan(self, oid: _ObjectID, keypath: str = "", depth: int = 0) -> _Node:
        """Checks the object ``oid`` and everything under it; raises _Invalid naming the key."""
        where = _shown(keypath)
        address = h5o.get_info(oid).addr
        if address in self._seen:
            raise _Invalid(f"{where}: an object reached a second time through another hard "
                           f"link (nnkit writes every object once)")
        self._seen.add(address)
        if depth > MAX_DEPTH:
            raise _Invalid(f"{where}: nested deeper than {MAX_DEPTH} levels")
        node = _Node(oid, _str_attr(oid, _TYPE, vlen=self.legacy), keypath)
        if isinstance(oid, h5g.GroupID) and node.kind in ("dict", "list"):
            node.entries = self._scan_group(oid, node.kind, keypath, depth)
        elif isinstance(oid, h5d.DatasetID) and node.kind in ("array", "scalar", "json"):
            self._check_dataset(node, where)
        else:
            what = {h5g.GroupID: "Group", h5d.DatasetID: "Dataset"}.get(type(oid), "Datatype")
            raise _Invalid(f"{where}: a {what} with {_TYPE}={node.kind!r} is not an object "
                           f"written by nnkit")
        if h5a.exists(oid, _CRC.encode()):
            node.crc = _attr(oid, _CRC)
            if not isinstance(node.crc, int):
                raise _Invalid(f"{where}: its checksum attribute {_CRC} is not an integer")
        elif not self.legacy:
            raise _Invalid(f"{where} has no checksum ({_CRC} attribute), which every object of "
                           f"this file should carry: the file is damaged")
        return node

    def _scan_group(self, gid: h5g.GroupID, kind: str, keypath: str,
                    depth: int) -> list[tuple[str, _Node]]:
        where = _shown(keypath)
        names = [name.decode("utf-8", errors="surrogateescape") for name in gid]
        for name in names:
            link = gid.links.get_info(name.encode("utf-8", errors="surrogateescape")).type
            if link != h5l.TYPE_HARD:  # soft/external links could reach other files
                raise _Invalid(f"{where}: {name!r} is a {_LINKS.get(link, 'user-defined link')}, "
                               f"not an object written by nnkit")
        if kind == "list":
            if sorted(names, key=lambda n: (len(n), n)) != [str(i) for i in range(len(names))]:
                raise _Invalid(f"{where}: a list group must hold items '0'..'{len(names) - 1}', "
                               f"got {names[:10]}")
            names = [str(i) for i in range(len(names))]
            paths = [f"{keypath}[{i}]" for i in range(len(names))]
        else:
            odd = [name for name in names if _escape_key(_unescape_key(name)) != name]
            if odd:  # e.g. "%41": two link names must not decode to one key
                raise _Invalid(f"{where}: link name {odd[0]!r} is not a key as nnkit escapes it")
            paths = [_keypath(keypath, _unescape_key(name)) for name in names]
        return [(name, self.scan(h5o.open(gid, name.encode("utf-8", errors="surrogateescape")),
                                 path, depth + 1))
                for name, path in zip(names, paths)]

    def _check_dataset(self, node: _Node, where: str) -> None:
        did = node.oid
        plist = did.get_create_plist()
        layout = plist.get_layout()
        if layout != h5d.CONTIGUOUS:
            raise _Invalid(f"{where}: a dataset with {_LAYOUTS.get(layout, layout)} storage; nnkit "
                           f"writes contiguous datasets only")
        if plist.get_external_count():
            raise _Invalid(f"{where}: a dataset whose data lives in external files; nnkit keeps "
                           f"all data inside the checkpoint")
        if plist.get_nfilters():
            raise _Invalid(f"{where}: a dataset stored through HDF5 filters (compression...), "
                           f"which nnkit does not use")
        dtype = did.dtype
        shape = None if did.get_space().get_simple_extent_type() == h5s.NULL else did.shape
        if node.kind == "json":
            if dtype.kind != "S" or shape != ():
                raise _Invalid(f"{where}: a json value must be a 0-d fixed-length string, got "
                               f"dtype {dtype} and shape {shape}")
        # dtype.kind excludes object ('O': vlen, references), void ('V': opaque, compound)
        elif dtype.kind not in _NUMERIC_KINDS or shape is None or (node.kind == "scalar" and shape):
            raise _Invalid(f"{where}: {node.kind} of unsupported dtype {dtype} or shape {shape}")
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes:
            offset, stored = did.get_offset(), did.get_storage_size()
            if offset is None or stored != nbytes or offset + nbytes > self.file_size:
                raise _Invalid(f"{where}: declares {nbytes} bytes ({dtype} {shape}) but the file "
                               f"stores {stored}{'' if offset is None else f' at offset {offset}'}")
            self._extents.append((offset, nbytes, where))
        node.shape, node.dtype = shape, dtype

    def check_extents(self) -> None:
        """Refuses datasets whose bytes overlap: each array's bytes are in the file once."""
        self._extents.sort()
        for (start, size, where), (other, _, other_where) in zip(self._extents, self._extents[1:]):
            if other < start + size:
                raise _Invalid(f"{other_where}: its data overlaps that of {where} (nnkit stores "
                               f"every array once)")

    # ------------------------------------------------------------ pass 2: data
    def read(self, node: _Node) -> tuple[Any, int]:
        """The value of a scanned object (recursively for groups) and its verified checksum."""
        if node.entries is not None:
            read = [(name, self.read(entry)) for name, entry in node.entries]
            crc = _group_crc(node.kind, ((name, entry_crc) for name, (_, entry_crc) in read))
            if node.kind == "dict":
                value: Any = {_unescape_key(name): item for name, (item, _) in read}
            else:
                value = [item for _, (item, _) in read]
        else:
            value, crc = self._read_dataset(node)
        if node.crc is not None and node.crc != crc:
            what = ("its entries were renamed, added, removed or reordered"
                    if node.entries is not None else "its data, dtype or shape changed")
            raise _Invalid(f"{_shown(node.keypath)}: checksum mismatch ({what}): the file is "
                           f"damaged")
        return value, crc

    @staticmethod
    def _read_dataset(node: _Node) -> tuple[Any, int]:
        data = np.empty(node.shape, node.dtype)
        if data.nbytes:  # scan checked that the bytes are stored: no fill values to make up
            node.oid.read(h5s.ALL, h5s.ALL, data)
        if node.kind != "json":
            return (data[()] if node.kind == "scalar" else data), _leaf_crc(node.kind, data)
        text = bytes(data[()])
        try:
            value = json.loads(text.decode("ascii"))
            if not _is_json_value(value):  # a JSON object: nnkit stores dicts as groups
                raise ValueError(f"a {type(value).__name__}, which nnkit does not store as JSON")
        except (ValueError, RecursionError) as e:  # RecursionError: "[[[[..." nested too deep
            raise _Invalid(f"{_shown(node.keypath)}: invalid JSON value ({type(e).__name__}: "
                           f"{e})") from None
        return value, _leaf_crc(node.kind, text)


def _outside_nnkit() -> int:
    """The ``stacklevel`` that makes a warning name the first caller outside nnkit."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2  # the caller of the function that warns
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


@contextlib.contextmanager
def _open_checkpoint(path: _PathLike) -> Iterator[tuple[h5py.File, str, bool]]:
    """Opens ``path`` read-only; yields the file, its kind (``format`` attribute) and whether
    it is a legacy file (written before checksums: no ``checksum`` attribute).

    Any failure (missing, not HDF5, truncated, not written by nnkit, unreadable content
    read inside the block) becomes a CheckpointError naming the path.
    """
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise CheckpointNotFoundError(f"{shown}: no such checkpoint file")
    if os.path.isdir(shown):
        raise CheckpointError(f"{shown}: is a directory, not a checkpoint file")
    if os.path.getsize(shown) == 0:
        raise CheckpointError(f"{shown}: the file is empty, not an nnkit checkpoint")
    try:
        if not h5py.is_hdf5(shown):
            raise _Invalid("not an HDF5 file, so not an nnkit checkpoint")
        with h5py.File(shown, "r") as f:
            legacy = not h5a.exists(f["/"].id, _CHECKSUM.encode())
            kind = _str_attr(f["/"].id, "format", vlen=legacy)
            if kind is None:
                raise _Invalid("an HDF5 file without a 'format' attribute: not written by nnkit")
            yield f, kind, legacy
    except _Invalid as e:
        raise CheckpointError(f"{shown}: {e}") from None
    except (CheckpointError, Warning):  # Warning: UnverifiedCheckpointWarning made an error
        raise
    except Exception as e:  # h5py and numpy raise all kinds of errors on a damaged file
        raise CheckpointError(f"{shown}: cannot read the checkpoint, the file may be truncated "
                              f"or corrupt ({type(e).__name__}: {e})") from e


@contextlib.contextmanager
def restoring(source: str) -> Iterator[None]:
    """Reports any failure to apply a loaded tree as a CheckpointError naming ``source``.

    A damaged or hostile file may hold a well-formed tree with values of the wrong type for
    the model (a string where a counter belongs, a number where a dict of slots belongs...);
    the code applying them then raises TypeError, KeyError, AttributeError... Wrapped in this
    block, callers see one error type for every bad checkpoint.
    """
    try:
        yield
    except CheckpointError:
        raise
    except (ArithmeticError, AttributeError, LookupError, MemoryError, RecursionError,
            TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the checkpoint's contents cannot be restored "
                              f"({type(e).__name__}: {e})") from e


def read_kind(path: _PathLike) -> str:
    """The ``format`` attribute of a checkpoint (e.g. ``"nnkit.checkpoint"``), unchecked.

    For tools that accept several kinds; raises CheckpointError if ``path`` is not an
    nnkit HDF5 file.
    """
    with _open_checkpoint(path) as (_, kind, _):
        return kind


def load_tree(path: _PathLike, kind: str = CHECKPOINT_KIND) -> dict[str, Any]:
    """Reads a tree written by :func:`save_tree` (arrays fully loaded, the file closed).

    Raises:
        CheckpointNotFoundError: ``path`` does not exist.
        CheckpointError: naming ``path``, when it is not an HDF5 file, is truncated or
            corrupt, was not written by nnkit, is of another ``kind``, has a newer
            ``format_version`` than :data:`FORMAT_VERSION`, or holds objects nnkit does not
            write.
    """
    _check_kind(kind)
    with _open_checkpoint(path) as (f, file_kind, legacy):
        if file_kind != kind:
            raise _Invalid(f"is a {file_kind!r} file, expected {kind!r}")
        root_id = f["/"].id
        version = _attr(root_id, "format_version")
        if not isinstance(version, int):
            raise _Invalid("format_version is missing or is not an integer")
        writer = _str_attr(root_id, "nnkit_version", vlen=legacy) or "unknown"
        if version > FORMAT_VERSION:
            raise _Invalid(f"format_version {version} was written by a newer nnkit "
                           f"(version {writer}); this nnkit reads format_version <= "
                           f"{FORMAT_VERSION}: upgrade nnkit")
        if version < 1:
            raise _Invalid(f"unknown format_version {version}")
        if legacy:
            # Before anything else is read: a caller that turns this warning into an error
            # (warnings.simplefilter("error", UnverifiedCheckpointWarning)) reads no data
            # and no variable-length string of a file it cannot verify.
            warnings.warn(f"{os.fspath(path)}: this checkpoint has no checksums (written by "
                          f"nnkit {writer} before they were added), so damage to it cannot be "
                          f"detected; save it again to add them", UnverifiedCheckpointWarning,
                          stacklevel=_outside_nnkit())
        elif _str_attr(root_id, _CHECKSUM) != _CRC_NAME:
            raise _Invalid(f"unknown checksum algorithm (this nnkit knows {_CRC_NAME!r})")
        # The size of the file opened (the path may already name a newer checkpoint).
        reader = _Reader(f.id.get_filesize(), legacy)
        root = reader.scan(root_id)
        if root.kind != "dict":
            raise _Invalid("the root group is not a dict")
        reader.check_extents()
        tree, _ = reader.read(root)
    return tree


# --------------------------------------------------------------------------- per-layer API
#: Before nnkit 0.2 Convolution2D named its parameters ``w``/``b``; every layer now says
#: ``weight``/``bias``. Files keep their old names and are read through this table.
_LEGACY_PARAM_NAMES = {"w": "weight", "b": "bias"}


def upgrade_names(saved: Mapping[str, Any], known: set[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``saved`` (full name -> value) with legacy names (``conv/w``) renamed to the ones in ``known``."""
    out: dict[str, Any] = {}
    for name, value in saved.items():
        layer, _, param = name.rpartition("/")
        new = f"{layer}/{_LEGACY_PARAM_NAMES.get(param, param)}"
        out[new if name not in known and new in known and new not in saved else name] = value
    return out


def _named_arrays(layers: Sequence[Layer]) -> tuple[dict[str, tuple[Layer, Param]], dict[str, tuple[Layer, np.ndarray]]]:
    """Every param and every state array by full name; raises if a layer is not built or a name repeats."""
    from .layers.base import Layer  # lazily: layers import nothing of this module, but keep it light

    params: dict[str, tuple[Layer, Param]] = {}
    state: dict[str, tuple[Layer, np.ndarray]] = {}
    for layer in layers:
        # A layer creates its Param objects and state in build, so an empty ``params`` does
        # not prove there is nothing to save: ask whether the class has any.
        creates_params = type(layer).create_params is not Layer.create_params
        if (creates_params and not layer.built) or any(p.data is None for p in layer.params):
            raise CheckpointError(f"{layer.describe()}: is not built, its parameters have no "
                                  f"arrays yet: run ComputeFeature once or call "
                                  f"build(input_shape) first")
        named = [(p.full_name, p, params) for p in layer.params]
        named += [(f"{layer.name}/{key}", array, state) for key, array in layer.state.items()]
        for full_name, value, table in named:
            if full_name in params or full_name in state:
                other = (params.get(full_name) or state[full_name])[0]
                raise CheckpointError(
                    f"parameter name {full_name!r} is used by both {other.describe()} and "
                    f"{layer.describe()}: give the layers distinct names")
            table[full_name] = (layer, value)
    return params, state


def save_model_parameter(step: int, path: _PathLike, layers: Sequence[Layer]) -> None:
    """Saves every parameter and state array of ``layers`` and ``step`` to ``path``.

    The kind is "nnkit.parameters". Parameters are stored by ``Param.full_name``
    (``layer/param``) under ``/params``, layer state (running statistics) likewise under
    ``/state``, the step as ``/step``; the write is atomic like :func:`save_tree`. Layers
    must be built and their parameter names unique.
    """
    step = operator.index(step)
    params, state = _named_arrays(layers)
    tree: dict[str, Any] = {"step": step, "params": {name: p.data for name, (_, p) in params.items()}}
    if state:
        tree["state"] = {name: array for name, (_, array) in state.items()}
    save_tree(path, tree, kind=PARAMETERS_KIND)


def load_model_parameter(path: _PathLike, layers: Sequence[Layer]) -> int:
    """Loads what :func:`save_model_parameter` saved into ``layers``; returns the step.

    Copies into the layers' existing arrays (in place, cast to the layer's dtype). Every
    parameter (and state array) of every layer must be in the file and everything in the
    file must belong to a layer; shapes must match. All of this is checked before anything
    is copied, so on error the layers are unchanged.
    """
    tree = load_tree(path, kind=PARAMETERS_KIND)
    shown = os.fspath(path)
    step, saved = tree.get("step"), tree.get("params")
    if type(step) is not int or not isinstance(saved, dict) or not isinstance(tree.get("state", {}), dict):
        raise CheckpointError(f"{shown}: expected an int 'step' and a 'params' group")
    assign_parameters(saved, layers, shown, state=tree.get("state", {}))
    return step


def _check_arrays(saved: Mapping[str, Any], targets: Mapping[str, tuple[Layer, np.ndarray]],
                  what: str, source: str) -> None:
    """Names, shapes and dtypes of ``saved`` against the layers' arrays; raises on any mismatch."""
    missing = [name for name in targets if name not in saved]
    unknown = [name for name in saved if name not in targets]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing from the file: {', '.join(missing)}")
        if unknown:
            parts.append(f"in the file but in no layer: {', '.join(unknown)}")
        raise CheckpointError(f"{source}: {what}s do not match the layers ({'; '.join(parts)})")
    for name, (layer, target) in targets.items():
        array = saved[name]
        if not isinstance(array, np.ndarray) or array.shape != target.shape:
            shape = array.shape if isinstance(array, np.ndarray) else type(array).__name__
            raise CheckpointError(f"{source}: {what} {name!r} has shape {shape} in the file "
                                  f"but {target.shape} in {layer.describe()}")
        if not np.can_cast(array.dtype, target.dtype, "same_kind"):
            raise CheckpointError(f"{source}: {what} {name!r} has dtype {array.dtype} in the "
                                  f"file, which does not convert to {target.dtype}")


def check_parameters(saved: Mapping[str, Any], layers: Sequence[Layer], source: str,
                     state: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict, dict]:
    """The checks of :func:`assign_parameters` without the copy: CheckpointError naming the
    parameter, its shape in the file and the layer's, if ``saved`` and ``state`` do not fit
    ``layers``. Returns ``saved`` with legacy names upgraded and the layers' arrays by name."""
    params, states = _named_arrays(layers)
    saved = upgrade_names(saved, params)
    param_arrays = {name: (layer, p.data) for name, (layer, p) in params.items()}
    _check_arrays(saved, param_arrays, "parameter", source)
    _check_arrays(state or {}, states, "state array", source)
    return saved, param_arrays, states


def assign_parameters(saved: Mapping[str, Any], layers: Sequence[Layer], source: str,
                      state: Mapping[str, Any] | None = None) -> None:
    """Copies ``saved`` (full parameter name -> array) and ``state`` into the layers in place.

    Every parameter of every layer must be in ``saved`` and every entry of ``saved`` must
    belong to a layer; likewise for the layers' state arrays and ``state`` (None: the file
    predates layer state, which is then only accepted if no layer has any). Shapes must match
    and dtypes convert. All of this is checked before anything is copied, so on error the
    layers are unchanged. ``source`` names the file in error messages.
    """
    saved, param_arrays, states = check_parameters(saved, layers, source, state)
    for name, (_, target) in param_arrays.items():
        target[...] = saved[name]
    for name, (_, target) in states.items():
        target[...] = state[name]
