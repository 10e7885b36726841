"""TensorBoard scalar event files written without TensorFlow: CRC32C, records, protos, readers."""
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, ROOT
from test_model import mlp, toy_data

from nnkit.views import Monitor, monitor_file
from nnkit.views.tensorboard import (
    SummaryWriter,
    TensorBoard,
    TensorBoardLogger,
    crc32c,
    encode_event,
    encode_record,
    masked_crc32c,
)


def read_records(path):
    """The payloads of an event file, checking every length and CRC (our own reader)."""
    data = Path(path).read_bytes()
    payloads, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        payload = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(payload)
        payloads.append(payload)
        pos += 16 + length
    return payloads


def scalars(logdir):
    """``{tag: [(step, value), ...]}`` as TensorBoard itself reads the directory."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA             # RFC 3720, B.4
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    crc = crc32c(b"123456789")
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_event_encoding_matches_the_tensorboard_proto():
    event_pb2 = pytest.importorskip("tensorboard.compat.proto.event_pb2")
    event = event_pb2.Event.FromString(encode_event(1234.5, 300, {"loss/train cost": 0.25, "x": -3e30}))
    assert event.wall_time == 1234.5 and event.step == 300
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [
        ("loss/train cost", 0.25), ("x", np.float32(-3e30))]
    big = event_pb2.Event.FromString(encode_event(0.0, 2**40 + 7))
    assert big.step == 2**40 + 7
    version = event_pb2.Event.FromString(encode_event(5.0, file_version="brain.Event:2"))
    assert version.file_version == "brain.Event:2" and version.step == 0
    record = encode_record(b"abc")
    assert record[:8] == struct.pack("<Q", 3) and record[12:15] == b"abc" and len(record) == 19


def test_summary_writer_round_trip(tmp_path):
    with SummaryWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.add_scalar("a/loss", 1.0 / step, step, wall_time=100.0 + step)
        writer.add_scalars({"b/x": 2.5, "b/y": -1.0}, 9)
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("events.out.tfevents.") and path == writer.path
    assert len(read_records(path)) == 7  # the file version, then one record per call
    got = scalars(tmp_path)
    assert got["a/loss"] == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert got["b/x"] == [(9, 2.5)] and got["b/y"] == [(9, -1.0)]


def expected_points(monitor):
    """``{figure/channel: [(step, value), ...]}`` for every non-empty channel of a monitor."""
    return {f"{fig.title}/{c.name}": list(zip(monitor.series(c.name).steps.tolist(),
                                              monitor.series(c.name).values.tolist()))
            for fig in monitor.figures for c in fig.channels if len(monitor.series(c.name))}


def assert_same(got, expected):
    assert sorted(got) == sorted(expected)
    for tag in expected:
        steps, values = zip(*expected[tag])
        assert [s for s, _ in got[tag]] == list(steps), tag
        np.testing.assert_allclose([v for _, v in got[tag]], np.float32(values), rtol=1e-6, err_msg=tag)


def test_callback_in_a_run_directory_writes_what_the_events_say(tmp_path):
    x, y = toy_data(256)
    mlp().fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25, run_dir=tmp_path / "run",
              callbacks=[TensorBoard(tmp_path / "tb")])
    expected = expected_points(monitor_file(tmp_path / "run" / "events.jsonl"))
    assert {"loss/train cost", "loss/validation loss", "epoch time/epoch time"} <= set(expected)
    assert_same(scalars(tmp_path / "tb"), expected)


def test_callback_without_a_bus_and_a_logger_on_a_background_run(tmp_path):
    x, y = toy_data(256)
    model = mlp()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[TensorBoard(tmp_path / "plain")])
    got = scalars(tmp_path / "plain")
    assert [s for s, _ in got["loss/train loss"]] == [16, 32]
    np.testing.assert_allclose([v for _, v in got["loss/train loss"]],
                               np.float32(model.trainer.history.history["loss"]), rtol=1e-6)
    assert len(got["epoch time/epoch time"]) == 2 and got["loss/train cost"][0][0] == 1
    assert got["loss/train cost"][-1][0] == 32  # the last batch is always reported

    run = mlp().fit(x, y, batch_size=16, epochs=2, verbose=0, background=True)
    logger = TensorBoardLogger(tmp_path / "bg")
    logger.attach(run)
    assert run.wait(30) == "finished"
    run.wait_for(run.shutdown())
    assert run.join(10)
    logger.close()
    monitor = Monitor()
    for event in run.events():
        monitor.update(event)
    assert_same(scalars(tmp_path / "bg"), expected_points(monitor))


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")
def test_nnkit_train_tensorboard_flag(tmp_path):
    from test_cli import SMALL_JOB
    job = tmp_path / "small.conf"
    job.write_text(SMALL_JOB.format(data=DATA, runs=tmp_path / "runs"))
    done = subprocess.run([sys.executable, "-m", "nnkit.cli", "train", job, "--run-dir", tmp_path / "run",
                           "--tensorboard"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    expected = expected_points(monitor_file(tmp_path / "run" / "events.jsonl"))
    got = scalars(tmp_path / "run" / "tensorboard")
    assert got["loss/train cost"][-1][0] == 20  # the job's 20 steps
    assert_same(got, expected)
