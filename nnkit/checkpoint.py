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
reordered entry raises CheckpointError naming the file and the key. The per-object checksums
sit in attributes (not HDF5's fletcher32 filter) so that storage stays contiguous, 0-d and empty
arrays included, and because CRC-32 costs a few ms per 100 MB where fletcher32 doubled the save.
Files written before checksums existed (no ``checksum`` attribute) still load; a
:class:`UnverifiedCheckpointWarning` then says that damage cannot be detected. The layout is
otherwise unchanged, so FORMAT_VERSION stays 1 and older nnkit versions read these files too.

Safety: loading never runs code from the file. Values are decoded with ``json`` (never
pickle or eval); datasets of object, variable-length, reference, opaque or compound
dtype, soft and external links, and objects without a known ``nnkit_type`` are rejected.
Unknown extra attributes are ignored.

Atomicity: a checkpoint is written to a temporary file in the destination directory,
fsynced, renamed onto the destination with ``os.replace`` and the directory is fsynced. On
any error the temporary file is removed and an existing file at the destination is left
untouched, so a crash or a full disk never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ._version import __version__

if TYPE_CHECKING:  # the per-layer functions only read layer.params and names
    from .layers.base import Layer, Param

__all__ = ["FORMAT_VERSION", "CheckpointError", "CheckpointNotFoundError",  # noqa: RUF022
           "UnverifiedCheckpointWarning",
           "save_tree", "load_tree", "read_kind", "save_model_parameter", "load_model_parameter",
           "atomic_path", "atomic_write"]

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
    obj.attrs[_TYPE] = entry.kind
    obj.attrs[_CRC] = np.uint32(entry.crc)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)  # writers open it by name (h5py's native driver is faster than a file object)
    try:
        yield tmp
        os.chmod(tmp, mode)
        _fsync_path(tmp)  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            e.add_note(f"while writing {path}")
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        _fsync_path(directory)


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
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs["format"] = kind
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["nnkit_version"] = __version__
        f.attrs[_CHECKSUM] = _CRC_NAME
        f.attrs[_TYPE] = "dict"
        for entry in root.entries:
            _write_entry(f, entry)
        f.attrs[_CRC] = np.uint32(root.crc)


# --------------------------------------------------------------------------- reading
def _str_attr(obj: h5py.HLObject, name: str) -> str | None:
    """A string attribute, or None when absent or not a string."""
    value = obj.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _int_attr(obj: h5py.HLObject, name: str) -> int | None:
    """A scalar integer attribute, or None when absent or of another type."""
    value = obj.attrs.get(name)
    if isinstance(value, np.integer) and not isinstance(value, np.bool_):
        return int(value)
    return None


def _shown(keypath: str) -> str:
    return repr(keypath) if keypath else "the root group"


class _Reader:
    """Decodes the objects of one open file written by save_tree, verifying their checksums."""

    def __init__(self, require_checksums: bool) -> None:
        self.require_checksums = require_checksums
        self.unverified = 0  # objects without a checksum (a file written before them)

    def read(self, obj: h5py.HLObject, keypath: str = "") -> tuple[Any, int]:
        """The value of ``obj`` (recursively for groups) and its recomputed checksum."""
        kind = _str_attr(obj, _TYPE)
        if isinstance(obj, h5py.Group) and kind in ("dict", "list"):
            value, crc = self._read_group(obj, kind, keypath)
        elif isinstance(obj, h5py.Dataset) and kind in ("array", "scalar", "json"):
            value, crc = self._read_dataset(obj, kind)
        else:
            raise _Invalid(f"{obj.name}: a {type(obj).__name__} with {_TYPE}={kind!r} is not "
                           f"an object written by nnkit")
        self._verify(obj, keypath, crc)
        return value, crc

    def _read_group(self, group: h5py.Group, kind: str, keypath: str) -> tuple[Any, int]:
        names = list(group)
        for name in names:
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):  # soft/external links could reach other files
                raise _Invalid(f"{group.name}: {name!r} is a {type(link).__name__}, not an object "
                               f"written by nnkit")
        if kind == "list":
            if sorted(names, key=lambda n: (len(n), n)) != [str(i) for i in range(len(names))]:
                raise _Invalid(f"{group.name}: a list group must hold items '0'..'{len(names) - 1}', "
                               f"got {names[:10]}")
            names = [str(i) for i in range(len(names))]
            paths = [f"{keypath}[{i}]" for i in range(len(names))]
        else:
            paths = [_keypath(keypath, _unescape_key(name)) for name in names]
        read = [self.read(group[name], path) for name, path in zip(names, paths)]
        crc = _group_crc(kind, ((name, entry_crc) for name, (_, entry_crc) in zip(names, read)))
        if kind == "dict":
            return {_unescape_key(name): value for name, (value, _) in zip(names, read)}, crc
        return [value for value, _ in read], crc

    @staticmethod
    def _read_dataset(ds: h5py.Dataset, kind: str) -> tuple[Any, int]:
        dtype, shape = ds.dtype, ds.shape
        if kind == "json":
            if dtype.kind != "S" or shape != ():
                raise _Invalid(f"{ds.name}: a json value must be a 0-d fixed-length string, "
                               f"got dtype {dtype} and shape {shape}")
            data = bytes(ds[()])
            try:
                return json.loads(data.decode("ascii")), _leaf_crc(kind, data)
            except (ValueError, RecursionError) as e:
                raise _Invalid(f"{ds.name}: invalid JSON value ({type(e).__name__}: {e})") from None
        # dtype.kind excludes object ('O': vlen, references), void ('V': opaque, compound)
        if dtype.kind not in _NUMERIC_KINDS or shape is None or (kind == "scalar" and shape):
            raise _Invalid(f"{ds.name}: {kind} of unsupported dtype {dtype} or shape {shape}")
        data = np.asarray(ds[()])
        return (data[()] if kind == "scalar" else data), _leaf_crc(kind, data)

    def _verify(self, obj: h5py.HLObject, keypath: str, crc: int) -> None:
        if _CRC not in obj.attrs:
            if self.require_checksums:
                raise _Invalid(f"{_shown(keypath)} has no checksum ({_CRC} attribute), which "
                               f"every object of this file should carry: the file is damaged")
            self.unverified += 1
            return
        stored = _int_attr(obj, _CRC)
        if stored != crc:
            what = ("its entries were renamed, added, removed or reordered"
                    if isinstance(obj, h5py.Group) else "its data, dtype or shape changed")
            raise _Invalid(f"{_shown(keypath)}: checksum mismatch ({what}): the file is damaged")


@contextlib.contextmanager
def _open_checkpoint(path: _PathLike) -> Iterator[tuple[h5py.File, str]]:
    """Opens ``path`` read-only; yields the file and its kind (``format`` attribute).

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
            kind = _str_attr(f, "format")
            if kind is None:
                raise _Invalid("an HDF5 file without a 'format' attribute: not written by nnkit")
            yield f, kind
    except _Invalid as e:
        raise CheckpointError(f"{shown}: {e}") from None
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{shown}: cannot read the checkpoint, the file may be truncated "
                              f"or corrupt ({type(e).__name__}: {e})") from e


def read_kind(path: _PathLike) -> str:
    """The ``format`` attribute of a checkpoint (e.g. ``"nnkit.checkpoint"``), unchecked.

    For tools that accept several kinds; raises CheckpointError if ``path`` is not an
    nnkit HDF5 file.
    """
    with _open_checkpoint(path) as (_, kind):
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
    with _open_checkpoint(path) as (f, file_kind):
        if file_kind != kind:
            raise _Invalid(f"is a {file_kind!r} file, expected {kind!r}")
        version = f.attrs.get("format_version")
        if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
            raise _Invalid(f"format_version {version!r} is not an integer")
        writer = _str_attr(f, "nnkit_version") or "unknown"
        if version > FORMAT_VERSION:
            raise _Invalid(f"format_version {int(version)} was written by a newer nnkit "
                           f"(version {writer}); this nnkit reads format_version <= "
                           f"{FORMAT_VERSION}: upgrade nnkit")
        if version < 1:
            raise _Invalid(f"unknown format_version {int(version)}")
        algorithm = _str_attr(f, _CHECKSUM)
        if _CHECKSUM in f.attrs and algorithm != _CRC_NAME:
            raise _Invalid(f"unknown checksum algorithm {algorithm!r} (this nnkit knows "
                           f"{_CRC_NAME!r})")
        reader = _Reader(require_checksums=algorithm is not None)
        tree, _ = reader.read(f)
        if not isinstance(tree, dict):
            raise _Invalid("the root group is not a dict")
    if reader.unverified:
        warnings.warn(f"{os.fspath(path)}: this checkpoint has no checksums (written by nnkit "
                      f"{writer} before they were added), so damage to it cannot be detected; "
                      f"save it again to add them", UnverifiedCheckpointWarning, stacklevel=2)
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


def assign_parameters(saved: Mapping[str, Any], layers: Sequence[Layer], source: str,
                      state: Mapping[str, Any] | None = None) -> None:
    """Copies ``saved`` (full parameter name -> array) and ``state`` into the layers in place.

    Every parameter of every layer must be in ``saved`` and every entry of ``saved`` must
    belong to a layer; likewise for the layers' state arrays and ``state`` (None: the file
    predates layer state, which is then only accepted if no layer has any). Shapes must match
    and dtypes convert. All of this is checked before anything is copied, so on error the
    layers are unchanged. ``source`` names the file in error messages.
    """
    params, states = _named_arrays(layers)
    saved = upgrade_names(saved, params)
    param_arrays = {name: (layer, p.data) for name, (layer, p) in params.items()}
    _check_arrays(saved, param_arrays, "parameter", source)
    _check_arrays(state or {}, states, "state array", source)
    for name, (_, target) in param_arrays.items():
        target[...] = saved[name]
    for name, (_, target) in states.items():
        target[...] = state[name]
