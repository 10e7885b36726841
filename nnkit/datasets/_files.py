"""Where dataset files live, fetching them with checksum verification, and reading them safely.

Files are looked up in ``data_dir`` (an argument), else ``$NNKIT_DATA``, else
``~/.nnkit/datasets``, each dataset in its own subfolder (``mnist/``, ``cifar10/``...).
A missing file is downloaded only when ``download=True``; the download goes to a temporary
file that is renamed into place only after its SHA-256 matches, so an interrupted or
corrupted transfer never leaves a file that looks valid.

Reading: every problem with a file's contents is a :class:`DatasetError` (a ``ValueError``)
whose message starts with the file's path; a missing file stays ``FileNotFoundError``.
:func:`open_data` reads plain or gzip files, and :func:`read_bounded` never takes more bytes
than the caller expects (plus one, to see trailing data), in chunks, so memory follows the
bytes really there and not a size a header claims.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import reprlib
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import IO, Iterator

import numpy as np

CHUNK = 1 << 20
# Deflate cannot expand data more than 1032:1, so a gzip file of n bytes holds at most this
# many times n: a header claiming more is refused before anything is read.
GZIP_MAX_RATIO = 1032


class DatasetError(ValueError):
    """A dataset file whose contents cannot be what they should be; the message names the file
    and what is wrong."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def describe(value: object, limit: int = 60) -> str:
    """A short repr of a value read from a file, for error messages (bounded, never raises)."""
    try:
        if isinstance(value, int) and value.bit_length() > 64:  # repr would be huge (or refused)
            return f"<int of {value.bit_length()} bits>"
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001  (a message must not fail on a hostile value)
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 2 * limit else text[:2 * limit] + "..."


@contextlib.contextmanager
def open_data(path: Path) -> Iterator[IO[bytes]]:
    """``path`` opened for reading, through gzip when its name ends in ``.gz``.

    Damaged or truncated gzip data (which ``gzip`` reports as ``EOFError``, ``BadGzipFile`` or
    ``zlib.error``) becomes a :class:`DatasetError` naming the file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            yield f
    except EOFError:
        raise DatasetError(f"{path}: truncated gzip data (the stream ends before its end "
                           "marker)") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path}: damaged gzip data ({exc})") from None


def max_content_size(f: IO[bytes], path: Path) -> int:
    """The most bytes ``f`` (from :func:`open_data`) can yield: a plain file's size, or for gzip
    :data:`GZIP_MAX_RATIO` times the compressed size."""
    size = os.fstat(f.fileno()).st_size
    return size * GZIP_MAX_RATIO if path.suffix == ".gz" else size


def read_bounded(f: IO[bytes], limit: int) -> bytearray:
    """At most ``limit`` + 1 bytes of ``f`` (the +1 tells "exactly ``limit``" from "more").

    Read in chunks into one growing buffer: a stream longer than expected is never decompressed
    or held in full, and memory follows the bytes really there, not a size a header claims.
    """
    buf = bytearray()
    while len(buf) <= limit:
        chunk = f.read(min(CHUNK, limit + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def read_exactly(f: IO[bytes], size: int, path: Path, what: str) -> bytearray:
    """The next ``size`` bytes of ``f`` (``what`` they are, for the message), refusing a stream
    that ends sooner or goes on after them."""
    data = read_bounded(f, size)
    if len(data) < size:
        raise DatasetError(f"{path}: truncated: {what} needs {size} bytes, only {len(data)} "
                           "are there")
    if len(data) > size:
        raise DatasetError(f"{path}: trailing data after the {size} bytes of {what}")
    return data


def check_labels(labels: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    """Refuses a label outside 0..num_classes-1 (it would only fail later, far from the file)."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        at = int(np.argmax(bad))
        raise DatasetError(f"{os.fspath(path)}: labels must be in 0..{num_classes - 1}, got "
                           f"{labels.min()}..{labels.max()} (label {labels[at]} at index {at})")


def default_data_dir() -> Path:
    """``$NNKIT_DATA`` if set, else ``~/.nnkit/datasets``."""
    return Path(os.environ.get("NNKIT_DATA") or Path.home() / ".nnkit" / "datasets")


def dataset_dir(data_dir: str | os.PathLike | None, subdir: str) -> Path:
    """The folder of one dataset: ``data_dir`` itself if it holds the files, else ``data_dir/subdir``."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return root / subdir if (root / subdir).is_dir() or data_dir is None else root


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(urls: list[str], dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Fetches ``dest`` from the first URL that answers and verifies its SHA-256.

    Raises ``OSError`` naming every URL tried when none gives the expected file.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
            got = sha256_of(tmp)
            if got != sha256:
                failures.append(f"{url}: checksum mismatch (sha256 {got}, expected {sha256})")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError(f"could not download {dest.name}:\n  " + "\n  ".join(failures))


def find_or_fetch(folder: Path, names: list[str], urls: list[str], sha256: str | None,
                  download_missing: bool, what: str) -> Path:
    """The first of ``names`` present in ``folder``, else a verified download of ``names[0]``."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if download_missing and sha256 is not None:
        return download(urls, folder / names[0], sha256)
    raise FileNotFoundError(
        f"{what}: none of {', '.join(names)} in {folder}. Pass data_dir= (or --data-dir, or set "
        f"NNKIT_DATA) to a folder that holds them, or download=True to fetch them")
