"""A restricted unpickler for dataset pickles (CIFAR-10 python version): numpy arrays, plain data.

``pickle.load`` runs whatever callable a file names, so a downloaded pickle is code. Refusing
unknown globals is not enough either: numpy's own ``dtype.__setstate__`` and
``ndarray.__setstate__`` trust their input, and a crafted state gives an array whose dtype has
object fields at forged addresses (SIGSEGV when it is freed), a field beyond the buffer, or
``numpy.ndarray(shape, dtype, buffer, offset)`` with a negative offset (bytes from the heap).

So nothing numpy reconstructs from file data is reached. The rule: every array this module
returns is a fresh copy of bytes that are in the file, of a dtype in :data:`ALLOWED_DTYPES`
(uint8; little-endian int32 and int64 for labels), and no object is built from the file beyond
plain data (dict, list, tuple, str, bytes, bytearray, int, float, bool, None) and such arrays.

* ``numpy.dtype(code, align, copy)`` gives a :class:`_DtypeSpec` stand-in that records the
  type code (refused unless allow-listed) and accepts only numpy's canonical state for it.
* ``_reconstruct(numpy.ndarray, (0,), b'b')`` (protocols 0-4) gives a :class:`_PendingArray`
  stand-in; its state ``(version, shape, dtype, fortran, data)`` is checked (shape of
  non-negative ints, dtype a stand-in, data ``bytes`` of exactly the size) and becomes
  ``np.frombuffer(data).reshape(shape).copy()``. The stand-ins in the result are then replaced
  by the arrays and dtypes they describe.
* ``_frombuffer(buf, dtype, shape, order)`` (protocol 5, in-band) does the same at once.
* ``numpy.ndarray`` itself only names the subtype for ``_reconstruct``; calling it is refused.
* ``_codecs.encode``: Python 3 writes ``bytes`` in protocol 2 as ``_codecs.encode(text,
  'latin1')``; a latin-1-only version (bounded work, text in, bytes out).
* ``builtins.bytes``: Python 3 writes an empty ``bytes`` in protocol 2 as ``bytes()``; only that
  argument-less call is allowed (``bytes(10**12)`` would allocate).

The opcodes run by the pure-Python unpickler, limited to a whitelist (no INST/OBJ/NEWOBJ,
persistent ids, extension codes, sets or out-of-band buffers), with BUILD only on the stand-ins
(it would otherwise set attributes on the allowed functions themselves: a file once changed
``__defaults__`` for every later load) and REDUCE only on allowed functions. The C unpickler is
not used because it sizes its memo table by the indices in the file (8 bytes of pickle took
1 GB) and, before CPython 3.13, allocated declared lengths before reading them. Here the memo is
a dict, every read is checked against the bytes left, the number of opcodes is bounded, and
containers nested deeper than :data:`MAX_DEPTH` or cyclic are refused.

Every refusal or unreadable pickle is an :class:`UnsafePickleError`, both a
``pickle.UnpicklingError`` and a :class:`~nnkit.datasets._files.DatasetError` (``ValueError``);
:func:`restricted_load_path` prefixes its message with the file's path.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import pickletools
from typing import IO, Any, Callable

import numpy as np

from ._files import DatasetError, describe

#: dtype allowed in a dataset pickle, by numpy's pickled type code -> the dtype it stands for.
ALLOWED_DTYPES: dict[str, np.dtype] = {"u1": np.dtype("u1"), "i4": np.dtype("<i4"),
                                       "i8": np.dtype("<i8")}
MAX_DEPTH = 32  # containers nested deeper (a CIFAR batch is 2 deep) are refused
MAX_NDIM = 32
MAX_DIM = 1 << 40  # per axis: keeps the size computation small whatever the file says
MAX_OPS = 1 << 21  # opcodes per load (an official batch runs ~30 000): bounds small-object memory


class UnsafePickleError(pickle.UnpicklingError, DatasetError):
    """A pickle refused by the restricted unpickler, or not readable as a pickle."""


def _canonical_state(dtype: np.dtype) -> tuple:
    """The ``__setstate__`` state numpy pickles for a plain ``dtype``."""
    return dtype.__reduce__()[2]


_CANONICAL = {code: _canonical_state(dt) for code, dt in ALLOWED_DTYPES.items()}


def _text(value: Any) -> Any:
    """Python-2 strings arrive as bytes (encoding='bytes'): their ASCII text, else ``value``."""
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


class _DtypeSpec:
    """Stands in for ``numpy.dtype``: an allow-listed type code, never numpy's ``__setstate__``."""

    __slots__ = ("code", "dtype")
    __hash__ = None  # type: ignore[assignment]  (unhashable: never a dict key or set member)

    def __init__(self, code: str) -> None:
        self.code, self.dtype = code, ALLOWED_DTYPES[code]

    def __setstate__(self, state: Any) -> None:
        """Accepts numpy's canonical state for this type code (bytes read as text), refuses the
        rest: no byte order, fields, subarray, item size or flags from the file."""
        canonical = _CANONICAL[self.code]
        if not (type(state) is tuple and len(state) == len(canonical) and all(
                type(a) is type(b) and a == b for a, b in zip(map(_text, state), canonical))):
            raise UnsafePickleError(f"state of numpy dtype {self.code!r} refused: "
                                    f"{describe(state)}; only {_CANONICAL[self.code]} is allowed")

    def __repr__(self) -> str:
        return f"numpy dtype {self.code!r}"


def _dtype(code: Any, align: Any = False, copy: Any = True) -> _DtypeSpec:
    """Stands in for ``numpy.dtype(code, align, copy)`` as numpy pickles dtypes."""
    code = _text(code)
    if not (isinstance(code, str) and code in ALLOWED_DTYPES):
        raise UnsafePickleError(f"numpy dtype {describe(code)} refused: dataset arrays may only "
                                f"be {', '.join(str(d) for d in ALLOWED_DTYPES.values())}")
    # numpy writes (code, False, True); Python 2 numpy wrote 0 and 1
    if type(align) not in (bool, int) or align != 0 or type(copy) not in (bool, int) or copy != 1:
        raise UnsafePickleError(f"numpy dtype {code!r} with align={describe(align)}, "
                                f"copy={describe(copy)} refused: only align=False, copy=True")
    return _DtypeSpec(code)


def _ndarray(*args: Any) -> None:
    """Stands in for ``numpy.ndarray`` (the subtype argument of ``_reconstruct``): not callable,
    as ``ndarray(shape, dtype, buffer, offset, strides)`` can read outside its buffer."""
    raise UnsafePickleError("numpy.ndarray(...) refused: arrays are only rebuilt through "
                            "_reconstruct or _frombuffer")


def _array(data: Any, spec: Any, shape: Any, order: str = "C", axis_order: Any = None
           ) -> np.ndarray:
    """A fresh array of ``spec``'s dtype and ``shape`` copied from the bytes ``data``, after
    checking that they are exactly the bytes that shape needs."""
    if not isinstance(spec, _DtypeSpec):
        raise UnsafePickleError(f"array dtype {describe(spec)} refused: not a numpy dtype")
    if not (isinstance(shape, tuple) and len(shape) <= MAX_NDIM
            and all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        raise UnsafePickleError(f"array shape {describe(shape)} refused: expected a tuple of at "
                                f"most {MAX_NDIM} ints in 0..{MAX_DIM}")
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError(f"array data must be bytes, got {type(data).__name__}")
    size = spec.dtype.itemsize
    for d in shape:
        size *= d
    if len(data) != size:
        raise UnsafePickleError(f"array of shape {shape} and dtype {spec.code!r} needs {size} "
                                f"bytes, got {len(data)}")
    flat = np.frombuffer(data, spec.dtype)
    if axis_order is not None:  # numpy's 'K' order: C layout of the axes in this order
        if not (type(axis_order) is tuple and all(type(a) is int for a in axis_order)
                and sorted(axis_order) == list(range(len(shape)))):
            raise UnsafePickleError(f"_frombuffer axis_order {describe(axis_order)} refused: not "
                                    f"a permutation of the {len(shape)} axes")
        return flat.reshape(shape).transpose(axis_order).copy()
    return flat.reshape(shape, order=order).copy()


class _PendingArray:
    """Stands in for the empty array ``_reconstruct`` makes: holds the array its state
    describes, built by :func:`_array` instead of ``ndarray.__setstate__``."""

    __slots__ = ("array",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        """``(1, shape, dtype, fortran, data)`` (or numpy 0's without the version) -> the array."""
        if self.array is not None:
            raise UnsafePickleError("array state given twice")
        if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1:
            state = state[1:]
        if not (type(state) is tuple and len(state) == 4 and type(state[2]) in (bool, int)
                and state[2] in (0, 1)):
            raise UnsafePickleError(f"array state {describe(state)} refused: expected "
                                    "(1, shape, dtype, is_fortran, data)")
        shape, spec, fortran, data = state
        self.array = _array(data, spec, shape, "F" if fortran else "C")

    def __repr__(self) -> str:
        return "numpy array"


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PendingArray:
    """Stands in for numpy's ``_reconstruct(ndarray, (0,), b'b')``, the first half of an array."""
    if subtype is not _ndarray:
        raise UnsafePickleError(f"_reconstruct of {_name(subtype)} refused: only numpy.ndarray")
    typecode = _text(typecode)
    if not (type(shape) is tuple and len(shape) == 1 and type(shape[0]) is int and shape[0] == 0
            and type(typecode) is str and typecode == "b"):
        raise UnsafePickleError(f"_reconstruct with shape {describe(shape)} and typecode "
                                f"{describe(typecode)} refused: numpy writes (0,) and b'b'")
    return _PendingArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None
                ) -> np.ndarray:
    """Stands in for numpy's ``_frombuffer`` (protocol 5), for in-band data only."""
    if (not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, _DtypeSpec)
            or type(order) is not str or order not in ("C", "F", "K")):
        raise UnsafePickleError(f"_frombuffer refused for {type(buf).__name__} data, dtype "
                                f"{describe(dtype)}, order {describe(order)}")
    if order == "K" and axis_order is not None:
        return _array(buf, dtype, shape, "C", axis_order)
    return _array(buf, dtype, shape, "C" if order == "K" else order)


def _latin1_encode(text: Any, encoding: Any = "latin1", errors: Any = "strict") -> bytes:
    """Stands in for ``_codecs.encode`` as Python 3 uses it for bytes in protocol 2."""
    if (type(text) is not str or type(encoding) is not str or encoding not in ("latin1", "latin-1")
            or type(errors) is not str or errors != "strict"):
        raise UnsafePickleError(
            f"_codecs.encode refused for {type(text).__name__} with encoding "
            f"{describe(encoding)}: only str with 'latin1' (how Python 3 pickles bytes in "
            "protocol 2)")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Stands in for ``bytes``: only the argument-less call Python 3 writes for ``b''``."""
    if args:
        raise UnsafePickleError("builtins.bytes refused with arguments: only bytes() allowed")
    return b""


ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1 (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
}
_NAMES = {id(f): f"{m}.{n}" for (m, n), f in reversed(ALLOWED_GLOBALS.items())}
_CALLABLE = frozenset(_NAMES)  # REDUCE calls these only (_ndarray refuses with its own message)


def _name(obj: Any) -> str:
    """``module.name`` of an allowed global, else a short repr."""
    return _NAMES.get(id(obj)) or describe(obj)


def _refused_opcode(code: int) -> Callable[[Any], None]:
    """A dispatch entry that refuses opcode ``code``."""
    def refuse(self: Any) -> None:
        raise UnsafePickleError(f"opcode {_OPNAMES[code]} refused: dataset pickles only need "
                                "plain data and numpy arrays")
    return refuse


class _Dispatch(dict):
    """The opcode table; a byte that is no opcode at all is refused by name too."""

    def __missing__(self, code: int) -> Callable[[Any], None]:
        raise UnsafePickleError(f"byte 0x{code:02x} is not a pickle opcode")


_OPNAMES = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}
_ALLOWED_OPCODES = {
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND",
    "APPENDS", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "GET", "BINGET", "LONG_BINGET",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD"}


class _Source:
    """The pickle's bytes, read strictly: a read past the end is a truncation error (the
    pure-Python unpickler would take the short bytes, or allocate a declared length first)."""

    def __init__(self, data: bytes) -> None:
        self.file = io.BytesIO(data)  # BytesIO.read(n) returns what is there, allocates no more

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or a truncation error."""
        data = self.file.read(n)
        if len(data) != n:
            raise UnsafePickleError(f"truncated: {n} bytes wanted at offset "
                                    f"{self.file.tell() - len(data)}, {len(data)} left")
        return data

    def readline(self) -> bytes:
        """One line with its newline, or a truncation error."""
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise UnsafePickleError("truncated: the argument of a text opcode runs to the end")
        return line


class RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python ``pickle`` unpickler with the opcode whitelist, BUILD, REDUCE and
    BYTEARRAY8 restricted and globals resolved only from :data:`ALLOWED_GLOBALS`.

    Python-2 module names (``__builtin__``, ``copy_reg``...) are mapped to their Python-3 names
    first, as the standard unpickler does, so ``__builtin__.eval`` is refused as ``builtins.eval``
    just the same. Use :func:`restricted_load`, which also swaps the stand-ins for arrays.
    """

    dispatch = _Dispatch({code: fn if _OPNAMES[code] in _ALLOWED_OPCODES else _refused_opcode(code)
                          for code, fn in pickle._Unpickler.dispatch.items()})

    def __init__(self, data: bytes, encoding: str = "bytes", max_ops: int = MAX_OPS) -> None:
        self._source = _Source(data)
        super().__init__(self._source, encoding=encoding)
        self._max_ops = max_ops

    def find_class(self, module: str, name: str) -> Any:
        """The allowed stand-in for ``module.name``; ``UnsafePickleError`` for anything else."""
        # The Python 2 -> 3 renames the standard find_class applies to protocol < 3 pickles;
        # applied unconditionally here, harmless since no Python-3 module has a Python-2-only name.
        key = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        key = (_compat_pickle.IMPORT_MAPPING.get(key[0], key[0]), key[1])
        try:
            return ALLOWED_GLOBALS[key]
        except KeyError:
            raise UnsafePickleError(
                f"refused global {key[0][:100]}.{key[1][:100]}: dataset pickles may only hold "
                "numpy arrays and plain data (dict, list, tuple, str, bytes, numbers)") from None

    def load(self) -> Any:
        """``pickle._Unpickler.load`` with a bound on the number of opcodes run."""
        self._unframer = pickle._Unframer(self._source.read, self._source.readline)
        # straight from the source until a FRAME opcode (protocol 4+) needs the unframer
        self.read, self.readline = self._source.read, self._source.readline
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        dispatch = self.dispatch
        try:
            for _ in range(self._max_ops):
                dispatch[self.read(1)[0]](self)
        except pickle._Stop as stop:
            return stop.value
        raise UnsafePickleError(f"more than {self._max_ops} opcodes: not a dataset pickle")

    def load_frame(self) -> None:
        """FRAME: from here on, reads go through the unframer."""
        size = int.from_bytes(self.read(8), "little")
        self._unframer.load_frame(size)  # reads the frame from the source: checked against it
        self.read, self.readline = self._unframer.read, self._unframer.readline

    def load_reduce(self) -> None:
        """REDUCE, for the allowed functions only (with a tuple of arguments)."""
        args, func = self.stack.pop(), self.stack[-1]
        if id(func) not in _CALLABLE or type(args) is not tuple:
            raise UnsafePickleError(f"REDUCE refused: {_name(func)} with {type(args).__name__} "
                                    "arguments (only allowed functions are called)")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        """BUILD, for the dtype and array stand-ins only (no attribute setting)."""
        state, inst = self.stack.pop(), self.stack[-1]
        if type(inst) not in (_DtypeSpec, _PendingArray):
            raise UnsafePickleError(f"BUILD refused on {_name(inst)}: only numpy arrays and "
                                    "dtypes take a state")
        inst.__setstate__(state)

    def load_bytearray8(self) -> None:
        """BYTEARRAY8 without allocating a declared length the file does not hold."""
        size = int.from_bytes(self.read(8), "little")
        self.append(bytearray(self.read(size)))  # read() refuses sizes beyond the file

    dispatch[pickle.FRAME[0]] = load_frame
    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


_PLAIN = frozenset({bytes, str, int, float, bool, type(None), bytearray, np.ndarray})


def _resolve(obj: Any, done: dict[int, Any], path: set[int], depth: int = 0) -> Any:
    """``obj`` with the stand-ins replaced by their arrays and dtypes (lists and dicts in place,
    tuples rebuilt); refuses other objects (e.g. a global as a value), cycles and deep nesting."""
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is _PendingArray:
        if obj.array is None:
            raise UnsafePickleError("array with no state: _reconstruct never followed by BUILD")
        return obj.array
    if kind is _DtypeSpec:
        return obj.dtype
    if kind not in (list, dict, tuple):
        raise UnsafePickleError(f"{_name(obj)} refused as a value: globals may only be called")
    key = id(obj)
    if key in done:
        return done[key]
    if key in path:
        raise UnsafePickleError("cyclic container refused")
    if depth >= MAX_DEPTH:
        raise UnsafePickleError(f"containers nested deeper than {MAX_DEPTH} levels refused")
    path.add(key)
    if kind is list:
        for i, v in enumerate(obj):
            if type(v) not in _PLAIN:  # (a fast path: a batch's lists hold 10000 plain items)
                obj[i] = _resolve(v, done, path, depth + 1)
        result = obj
    elif kind is dict:
        for k, v in obj.items():
            if type(k) not in _PLAIN:  # stand-ins are unhashable; this refuses a global as a key
                _resolve(k, done, path, depth + 1)
            obj[k] = _resolve(v, done, path, depth + 1)
        result = obj
    else:
        result = tuple(_resolve(v, done, path, depth + 1) for v in obj)
    path.discard(key)
    done[key] = result
    return result


def restricted_loads(data: bytes, encoding: str = "bytes", max_ops: int = MAX_OPS) -> Any:
    """Unpickles ``data`` (bytes) with :class:`RestrictedUnpickler`: plain data and fresh numpy
    arrays of allow-listed dtypes, or :class:`UnsafePickleError`.

    ``encoding="bytes"`` reads Python-2 ``str`` as ``bytes`` (the official CIFAR-10 files are
    Python-2 pickles whose keys come out as ``b'data'``, ``b'labels'``...).
    """
    try:
        result = RestrictedUnpickler(data, encoding=encoding, max_ops=max_ops).load()
        return _resolve(result, {}, set())
    except (UnsafePickleError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001  (whatever a malformed pickle makes the opcodes raise)
        raise UnsafePickleError(f"not a readable pickle ({type(exc).__name__}: "
                                f"{describe(str(exc), 150)})") from None


def restricted_load(file: IO[bytes], encoding: str = "bytes") -> Any:
    """Unpickles from a binary file object (read whole first); see :func:`restricted_loads`."""
    return restricted_loads(file.read(), encoding=encoding)


def restricted_load_path(path: str | os.PathLike, encoding: str = "bytes",
                         max_bytes: int | None = None) -> Any:
    """Unpickles a file by path; a file over ``max_bytes`` (when given), any refusal or format
    error is an :class:`UnsafePickleError` whose message starts with the path."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if max_bytes is not None and size > max_bytes:
                raise UnsafePickleError(f"{size} bytes, more than the {max_bytes} this dataset's "
                                        "pickles may have")
            return restricted_load(f, encoding=encoding)
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{os.fspath(path)}: {exc}") from None
