"""Dataset readers on the real files in ../shared/data, bad files, and verified download."""
import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from nnkit.datasets import load_cifar10, load_fashion_mnist, load_mnist, read_cifar_bin, read_idx
from nnkit.datasets import _files
from nnkit.datasets.mnist import MNIST_FILES

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")


def test_mnist_real_files():
    x, y = load_mnist(DATA, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    x, y = load_mnist(DATA / "mnist", "train")  # the dataset folder itself works too
    assert x.shape == (60000, 28, 28) and np.bincount(y).sum() == 60000


def test_fashion_mnist_real_files():
    x, y = load_fashion_mnist(DATA, "test")
    assert x.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)


def test_cifar10_real_files():
    x, y = load_cifar10(DATA, "test")
    assert x.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    np.testing.assert_array_equal(y[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    xb, yb = read_cifar_bin(DATA / "cifar10" / "data_batch_1.bin.gz")
    np.testing.assert_array_equal(np.bincount(yb), [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981])


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    raw = gzip.open(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "short").write_bytes(raw[:100])
    with pytest.raises(ValueError, match="100 bytes, expected 10008"):
        read_idx(tmp_path / "short")
    (tmp_path / "foreign").write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "foreign")
    (tmp_path / "bad.bin").write_bytes(bytes(3000))
    with pytest.raises(ValueError, match="3073-byte"):
        read_cifar_bin(tmp_path / "bad.bin")


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, "train")


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_verifies_checksum_and_leaves_nothing_on_failure(tmp_path, loopback_server):
    served, url = loopback_server
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(DATA / "mnist" / name, served / name)
    dest = tmp_path / "cache" / name
    with pytest.raises(OSError, match="checksum mismatch"):
        _files.download([url + name], dest, "0" * 64)
    assert not dest.exists() and not list(dest.parent.glob("*.part"))
    with pytest.raises(OSError, match="404"):
        _files.download([url + "absent.gz"], dest, "0" * 64)
    _files.download([url + "absent.gz", url + name], dest, MNIST_FILES["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(read_idx(dest)[:3], [7, 2, 1])


def test_default_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NNKIT_DATA", str(tmp_path))
    assert _files.default_data_dir() == tmp_path
    monkeypatch.delenv("NNKIT_DATA")
    assert _files.default_data_dir() == Path.home() / ".nnkit" / "datasets"
