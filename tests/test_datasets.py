"""Dataset readers on the real files in ../shared/data, bad files, verified download, CIFAR-10
python pickles through the restricted unpickler, normalization helpers and load-by-name."""
import functools
import gzip
import http.server
import os
import pickle
import shlex
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from nnkit import datasets
from nnkit.datasets import (channel_stats, load, load_cifar10, load_fashion_mnist, load_mnist,
                            mean_image, read_cifar_bin, read_cifar_py, read_idx, scale, standardize,
                            subtract_mean)
from nnkit.datasets import _files, preprocessing
from nnkit.datasets.cifar import RECORD
from nnkit.datasets.mnist import MNIST_FILES
from nnkit.datasets.safe_pickle import restricted_loads

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data")


@needs_data
def test_mnist_real_files():
    x, y = load_mnist(DATA, "test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    x, y = load_mnist(DATA / "mnist", "train")  # the dataset folder itself works too
    assert x.shape == (60000, 28, 28) and np.bincount(y).sum() == 60000


@needs_data
def test_fashion_mnist_real_files():
    x, y = load_fashion_mnist(DATA, "test")
    assert x.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)


@needs_data
def test_cifar10_real_files():
    x, y = load_cifar10(DATA, "test")
    assert x.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)
    np.testing.assert_array_equal(y[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])
    xb, yb = read_cifar_bin(DATA / "cifar10" / "data_batch_1.bin.gz")
    np.testing.assert_array_equal(np.bincount(yb), [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981])


@needs_data
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


@needs_data
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


# ---------------------------------------------------------------- CIFAR-10 python version

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
SMALL = 50  # records taken from the start of each real batch


def _small_binary_batch(name: str) -> bytes:
    """The first SMALL records of a real binary batch (gzip streams read only that far)."""
    with gzip.open(DATA / "cifar10" / f"{name}.bin.gz") as f:
        return f.read(SMALL * RECORD)


def _python_batch(raw: bytes, name: str, label_shift: int = 0) -> dict:
    """The official python-version layout of binary records ``raw``."""
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    return {b"batch_label": f"{name} of 5".encode(),
            b"labels": [(int(v) + label_shift) % 10 for v in records[:, 0]],
            b"data": records[:, 1:].copy(),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(records))]}


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    """tmp/bin/<name>.bin and tmp/py/cifar-10-batches-py/<name> with the same SMALL records."""
    root = tmp_path_factory.mktemp("cifar")
    (root / "bin").mkdir()
    (root / "py" / "cifar-10-batches-py").mkdir(parents=True)
    raws = {}
    for name in CIFAR_BATCHES:
        raws[name] = _small_binary_batch(name)
        (root / "bin" / f"{name}.bin").write_bytes(raws[name])
        (root / "py" / "cifar-10-batches-py" / name).write_bytes(
            pickle.dumps(_python_batch(raws[name], name), protocol=2))
    return root, raws


@needs_data
def test_cifar10_python_batches_load_like_binary(small_cifar):
    root, _ = small_cifar
    for split, n in (("train", 5 * SMALL), ("test", SMALL)):
        xb, yb = load_cifar10(root / "bin", split)
        xp, yp = load_cifar10(root / "py", split)
        assert xp.shape == (n, 3, 32, 32) and xp.dtype == np.uint8 and yp.dtype == np.uint8
        np.testing.assert_array_equal(xp, xb)
        np.testing.assert_array_equal(yp, yb)
    np.testing.assert_array_equal(yp[:10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1])  # the real test labels


@needs_data
def test_cifar10_binary_batches_are_preferred(small_cifar, tmp_path):
    root, raws = small_cifar
    for name in CIFAR_BATCHES:  # python batches with different labels beside the binary ones
        shutil.copy(root / "bin" / f"{name}.bin", tmp_path)
        (tmp_path / name).write_bytes(pickle.dumps(_python_batch(raws[name], name, 1), protocol=2))
    binary_labels = load_cifar10(root / "bin", "test")[1]
    np.testing.assert_array_equal(load_cifar10(tmp_path, "test")[1], binary_labels)
    (tmp_path / "test_batch.bin").unlink()  # now only the python batch is left
    np.testing.assert_array_equal(load_cifar10(tmp_path, "test")[1], (binary_labels + 1) % 10)


@needs_data
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_python_batches_of_later_protocols(small_cifar, tmp_path, protocol):
    root, raws = small_cifar
    batch = _python_batch(raws["test_batch"], "test_batch")
    batch[b"data"] = np.asfortranarray(batch[b"data"])  # protocol 5 keeps the order: test "F" too
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y = read_cifar_py(tmp_path / "test_batch")
    xb, yb = read_cifar_bin(root / "bin" / "test_batch.bin")
    np.testing.assert_array_equal(x, xb)
    np.testing.assert_array_equal(y, yb)


def _py2(obj) -> bytes:
    """Pickle opcodes for ``obj`` as Python 2 + numpy 1 wrote them (protocol 2): byte strings are
    BINSTRING (a Python 2 str) and arrays go through ``numpy.core.multiarray._reconstruct``."""
    if isinstance(obj, bytes):
        return b"T" + struct.pack("<I", len(obj)) + obj
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, list):
        return b"](" + b"".join(map(_py2, obj)) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8
    dtype = (b"cnumpy\ndtype\n" + _py2(b"u1") + b"\x89\x88\x87R("  # dtype('u1', False, True)
             + b"".join(map(_py2, [3, b"|"])) + b"NNN" + b"".join(map(_py2, [-1, -1, 0])) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2(0) + b"\x85"
            + _py2(b"b") + b"\x87R(" + _py2(1) + b"(" + b"".join(map(_py2, obj.shape)) + b"t"
            + dtype + b"\x89" + _py2(obj.tobytes()) + b"tb")


@needs_data
def test_python2_pickle_as_in_the_official_archive(small_cifar, tmp_path):
    root, raws = small_cifar
    batch = _python_batch(raws["test_batch"], "test_batch")
    blob = b"\x80\x02" + _py2(batch) + b"."
    reference = pickle.loads(blob, encoding="bytes")  # the hand-made pickle is valid
    np.testing.assert_array_equal(reference[b"data"], batch[b"data"])
    restricted = restricted_loads(blob)
    assert restricted.keys() == batch.keys() and restricted[b"labels"] == batch[b"labels"]
    (tmp_path / "test_batch").write_bytes(blob)
    x, y = read_cifar_py(tmp_path / "test_batch")
    xb, yb = read_cifar_bin(root / "bin" / "test_batch.bin")
    np.testing.assert_array_equal(x, xb)
    np.testing.assert_array_equal(y, yb)


class _Payload:
    """Unpickling this calls ``func(arg)``: the classic pickle code-execution payload."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _payloads(marker: Path) -> dict[str, _Payload]:
    """Payloads that each create ``marker`` when they run."""
    return {"system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
            "eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("kind", ["system", "eval"])
def test_payloads_are_live_with_plain_pickle(tmp_path, kind):
    """Control for the refusal test: the same payloads do run under pickle.loads."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_payloads(marker)[kind], protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("kind", ["system", "eval"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path, kind, protocol):
    marker = tmp_path / "ran"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_payloads(marker)[kind]]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(evil, protocol=protocol))
    refused = r"(posix|os)\.system" if kind == "system" else r"(builtins|__builtin__)\.eval"
    with pytest.raises(pickle.UnpicklingError, match=rf"test_batch: refused global {refused}"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


@pytest.mark.parametrize("blob, message", [
    (b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R.",
     "encoding 'zlib'"),  # only latin-1, the codec Python 3 uses for bytes
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\xca\x9a\x3b\x85R.", "bytes refused with arguments"),
    (b"\x80\x05cnumpy._core.numeric\n_frombuffer\n(N\x8c\x01xK\x01\x85\x8c\x01Ct\x94R.",
     "_frombuffer refused for NoneType"),
    (b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\nmemmap\nK\x00\x85U\x01b\x87R.",
     "refused global numpy.memmap"),
    (b"\x80\x02cnumpy._core.multiarray\n_reconstruct\nc_codecs\nencode\nK\x00\x85U\x01b\x87R.",
     "_reconstruct of _codecs.encode refused"),
    (b"\x80\x02c__builtin__\ndict\n)R.", "refused global builtins.dict"),  # no longer needed
])
def test_allowed_globals_are_narrowed(blob, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        restricted_loads(blob)


def test_python_batch_layout_errors_name_the_file(tmp_path):
    path = tmp_path / "data_batch_1"
    cases = [([1, 2], "expected a dict"),
             ({b"labels": [0]}, r"no b'data'"),
             ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(2, 100\)"),
             ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
              "dtype 'f4' refused"),  # not an allowed dtype: refused while unpickling
             ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
              r"2 integers .* shape \(1,\)"),
             ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"0\.\.9, got 0\.\.10")]
    for obj, message in cases:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(ValueError, match=message) as info:
            read_cifar_py(path)
        assert str(path) in str(info.value)
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})[:-20])
    with pytest.raises(pickle.UnpicklingError, match=str(path)):  # truncated
        read_cifar_py(path)


def test_python2_dtype_arguments_and_integer_label_arrays_load(tmp_path):
    """numpy 1 under Python 2 wrote dtype('u1', 0, 1) (ints, not bools); labels may also be an
    int64 array. The arrays that come out are fresh, writable copies."""
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = b"\x80\x02" + _py2({b"data": data, b"labels": [1, 2]}) + b"."
    blob = blob.replace(b"\x89\x88\x87R", b"K\x00K\x01\x87R")
    batch = restricted_loads(blob)
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"data"].flags.writeable and batch[b"data"].flags.owndata
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": np.array([3, 4])}, protocol=4))
    x, y = read_cifar_py(path)
    np.testing.assert_array_equal(y, [3, 4])
    assert y.dtype == np.uint8 and x.shape == (2, 3, 32, 32)


def test_loader_errors_are_dataset_errors(tmp_path):
    """One type for every bad file: DatasetError, a ValueError (refused pickles are also
    pickle.UnpicklingError); a missing file stays FileNotFoundError."""
    assert issubclass(datasets.DatasetError, ValueError)
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(40))[:-12])
    with pytest.raises(datasets.DatasetError, match="x.gz: truncated gzip"):
        read_idx(tmp_path / "x.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz")
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x02cos\nsystem\n.")
    with pytest.raises(datasets.DatasetError, match="data_batch_1: refused global") as info:
        read_cifar_py(tmp_path / "data_batch_1")
    assert isinstance(info.value, pickle.UnpicklingError)


# ---------------------------------------------------------------- normalization

def _images(shape=(6, 3, 4, 5), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_scale_is_a_new_float_array_of_x_times_factor():
    x = _images()
    keep = x.copy()
    out = scale(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, x / 255.0, rtol=1.2e-7)  # factor and product rounded to float32
    assert out.max() <= 1.0
    out64 = scale(x, factor=2.0, dtype=np.float64)
    assert out64.dtype == np.float64
    np.testing.assert_array_equal(out64, x.astype(np.float64) * 2)
    np.testing.assert_array_equal(x, keep)
    with pytest.raises(ValueError, match="floating type, got int32"):
        scale(x, dtype=np.int32)
    with pytest.raises(ValueError, match="numeric array, got <U1"):
        scale(np.array(["a"]))


def test_mean_image_is_the_per_pixel_mean():
    x = _images()
    expected = sum(x[i].astype(np.float64) for i in range(len(x))) / len(x)
    m = mean_image(x)
    assert m.dtype == np.float32 and m.shape == (3, 4, 5)
    np.testing.assert_allclose(m, expected, rtol=1e-6)
    assert mean_image(x[:, 0]).shape == (4, 5)  # grayscale (N, H, W)
    with pytest.raises(ValueError, match=r"at least 2 axes, got uint8 array of shape \(6,\)"):
        mean_image(x[:, 0, 0, 0])
    with pytest.raises(ValueError, match="no samples"):
        mean_image(x[:0])


def test_channel_stats_match_numpy_across_chunks(monkeypatch):
    x = _images((7, 3, 4, 5))
    ref = x.astype(np.float64)
    monkeypatch.setattr(preprocessing, "CHUNK_ELEMENTS", 2 * x[0].size)  # 4 chunks, last partial
    mean, std = channel_stats(x)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (3,)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-6)
    mean2, std2 = channel_stats(ref.reshape(7, -1))  # (N, D): per feature
    np.testing.assert_allclose(std2, ref.reshape(7, -1).std(axis=0), rtol=1e-6)


@needs_data
def test_cifar10_training_statistics_match_published_values():
    x, _ = load_cifar10(DATA, "train")
    published_mean = [125.307, 122.950, 113.865]
    np.testing.assert_allclose(mean_image(x).mean(axis=(1, 2)), published_mean, atol=1e-3)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, published_mean, atol=1e-3)
    np.testing.assert_allclose(std / 255, [0.2470, 0.2435, 0.2616], atol=1e-4)


def test_subtract_mean_accepts_image_channel_or_scalar_means():
    x = _images()
    keep = x.copy()
    ref = x.astype(np.float64)
    image = mean_image(x)
    channel = np.array([100.0, 120.0, 140.0])
    for mean, expected in ((image, ref - image), (channel, ref - channel[:, None, None]),
                           (127.5, ref - 127.5)):
        out = subtract_mean(x, mean)
        assert out.dtype == np.float32 and out.shape == x.shape
        np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(subtract_mean(x, image).mean(axis=0), 0, atol=1e-4)
    with pytest.raises(ValueError, match=r"mean of shape \(3, 4\) does not fit x of shape "
                                         r"\(6, 3, 4, 5\).*\(3, 4, 5\) or per channel \(3,\)"):
        subtract_mean(x, image[:, :, 0])
    with pytest.raises(ValueError, match=r"mean of shape \(4,\) does not fit x .*\(6, 4, 5\)"):
        subtract_mean(x[:, 0], np.zeros(4))  # no channel axis in (N, H, W)


def test_standardize_gives_zero_mean_unit_std_per_channel():
    x = _images((8, 3, 4, 4))
    mean, std = channel_stats(x)
    out = standardize(x, mean, std)
    assert out.dtype == np.float32 and out.shape == x.shape
    m, s = mean[:, None, None].astype(np.float64), std[:, None, None].astype(np.float64)
    np.testing.assert_allclose(out, (x - m) / s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    with pytest.raises(ValueError, match="std must be positive"):
        standardize(x, mean, np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"std of shape \(2,\) does not fit"):
        standardize(x, mean, std[:2])


# ---------------------------------------------------------------- load by name

@needs_data
def test_load_dispatches_by_name():
    x, y = load("mnist", DATA, "test")
    xr, yr = load_mnist(DATA, "test")
    np.testing.assert_array_equal(x, xr)
    np.testing.assert_array_equal(y, yr)
    for name in ("fashion-mnist", "fashion_mnist", "Fashion-MNIST"):
        np.testing.assert_array_equal(load(name, DATA, "test")[1],
                                      load_fashion_mnist(DATA, "test")[1])
    assert load("cifar10", DATA, split="test")[0].shape == (10000, 3, 32, 32)


def test_load_rejects_unknown_names_listing_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid names: mnist, "
                                         "fashion-mnist, fashion_mnist, cifar10"):
        load("imagenet")
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load("mnist", tmp_path, split="val")
    assert set(datasets.DATASETS) == {"mnist", "fashion-mnist", "fashion_mnist", "cifar10"}
