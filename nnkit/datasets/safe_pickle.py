"""A restricted unpickler for dataset pickles (CIFAR-10 python version): numpy arrays, plain data.

``pickle.load`` runs whatever callable a file names, so a downloaded pickle is code. This
unpickler resolves only the few globals needed to rebuild numpy arrays and plain containers,
and refuses every other one with ``pickle.UnpicklingError`` naming it, *before* anything is
called. Nothing is imported: allowed names map to objects held in a table here.

What a numpy-array pickle needs, and why each entry is safe:

* ``numpy.core.multiarray._reconstruct`` (numpy 1 name, used by the official Python-2 files)
  and ``numpy._core.multiarray._reconstruct`` (numpy 2): replaced by a function that only makes
  an empty ``ndarray``, ignoring the requested shape (so no huge allocation can be asked for);
  the array's real shape, dtype and bytes come from ``ndarray.__setstate__``, which checks that
  the byte count matches.
* ``numpy._core.numeric._frombuffer`` (``numpy.core.numeric`` in numpy 1): how protocol 5 writes
  arrays. Replaced by a version that takes only in-band ``bytes``/``bytearray`` data, and whose
  reshape checks the byte count against the shape.
* ``numpy.ndarray`` (passed to ``_reconstruct`` as the subtype) and ``numpy.dtype``.
* ``_codecs.encode``: Python 3 writes ``bytes`` in protocol 2 as ``_codecs.encode(text,
  'latin1')``. The general function can run any codec, so it is replaced by a latin-1-only
  version (bounded work, text in, bytes out). Python-2 files do not need it.
* ``builtins.bytes``: Python 3 writes an empty ``bytes`` in protocol 2 as ``bytes()``; only that
  argument-less call is allowed (``bytes(10**12)`` would allocate).
* ``builtins.dict``, ``list``, ``str``: plain types, harmless to call.
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from typing import IO, Any, Callable

import numpy as np


def _empty_array(subtype: Any, shape: Any = (0,), typecode: Any = b"b") -> np.ndarray:
    """Stands in for numpy's ``_reconstruct``: an empty ndarray that ``__setstate__`` then fills."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"_reconstruct of {subtype!r} refused: only numpy.ndarray")
    return np.ndarray((0,), np.uint8)


def _array_from_buffer(buf: Any, dtype: Any, shape: Any, order: Any,
                       axis_order: Any = None) -> np.ndarray:
    """Stands in for numpy's ``_frombuffer`` (protocol 5), for in-band data only."""
    if (not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype)
            or order not in ("C", "F", "K")):
        raise pickle.UnpicklingError(
            f"_frombuffer refused for {type(buf).__name__} data, dtype {dtype!r}, order {order!r}")
    array = np.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


def _latin1_encode(text: Any, encoding: Any = "latin1", errors: Any = "strict") -> bytes:
    """Stands in for ``_codecs.encode`` as Python 3 uses it for bytes in protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode refused for {type(text).__name__} with encoding {encoding!r}: only "
            "str with 'latin1' (how Python 3 pickles bytes in protocol 2)")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Stands in for ``bytes``: only the argument-less call Python 3 writes for ``b''``."""
    if args:
        raise pickle.UnpicklingError("builtins.bytes refused with arguments: only bytes() allowed")
    return b""


ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "str"): str,
}


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS` and refuses the rest.

    Python-2 module names (``__builtin__``, ``copy_reg``...) are mapped to their Python-3 names
    first, as the standard unpickler does, so ``__builtin__.eval`` is refused as ``builtins.eval``
    just the same.
    """

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; ``pickle.UnpicklingError`` for anything else."""
        # The Python 2 -> 3 renames the standard find_class applies to protocol < 3 pickles; applied
        # unconditionally here (the C unpickler does not expose the protocol), which is harmless
        # since no Python-3 module has a Python-2-only name.
        key = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        key = (_compat_pickle.IMPORT_MAPPING.get(key[0], key[0]), key[1])
        try:
            return ALLOWED_GLOBALS[key]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: dataset pickles may only hold numpy arrays and "
                "plain types (dict, list, str, bytes, numbers)") from None


def restricted_load(file: IO[bytes], encoding: str = "bytes") -> Any:
    """Unpickles from a binary file object with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` reads Python-2 ``str`` as ``bytes`` (the official CIFAR-10 files are
    Python-2 pickles whose keys come out as ``b'data'``, ``b'labels'``...).
    """
    return RestrictedUnpickler(file, encoding=encoding).load()


def restricted_loads(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickles ``data`` (bytes) with :class:`RestrictedUnpickler`; see :func:`restricted_load`."""
    return restricted_load(io.BytesIO(data), encoding=encoding)


def restricted_load_path(path: str | os.PathLike, encoding: str = "bytes") -> Any:
    """Unpickles a file by path, prefixing any refusal or format error with the path."""
    with open(path, "rb") as f:
        try:
            return restricted_load(f, encoding=encoding)
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"{os.fspath(path)}: {exc}") from None
