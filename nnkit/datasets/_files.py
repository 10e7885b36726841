"""Where dataset files live, and fetching them with checksum verification.

Files are looked up in ``data_dir`` (an argument), else ``$NNKIT_DATA``, else
``~/.nnkit/datasets``, each dataset in its own subfolder (``mnist/``, ``cifar10/``...).
A missing file is downloaded only when ``download=True``; the download goes to a temporary
file that is renamed into place only after its SHA-256 matches, so an interrupted or
corrupted transfer never leaves a file that looks valid.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

CHUNK = 1 << 20


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
