"""Channels, figures and the Monitor: series, moving averages, derived fields, feeding."""
import json
import math
import time

import numpy as np
import pytest
from helpers import wait_until
from test_model import mlp, toy_data

from nnkit.training import LambdaCallback
from nnkit.views import DEFAULT_FIGURES, Channel, Figure, Monitor, monitor_file


def ev(kind, seq, t, **fields):
    return {"schema": 1, "run": "r1", "seq": seq, "time": t, "type": kind, **fields}


def trailing_mean(values, window):
    return np.array([np.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))])


def test_channel_and_figure_validation():
    with pytest.raises(ValueError, match="TYPE.FIELD"):
        Channel("x", "loss")
    with pytest.raises(ValueError, match="TYPE.FIELD"):
        Channel("x", ".loss")
    with pytest.raises(TypeError, match="source"):
        Channel("x", 3)
    with pytest.raises(ValueError, match="window"):
        Channel("x", "loss.loss", window=0)
    with pytest.raises(ValueError, match="window"):
        Channel("x", "loss.loss", window=2.5)
    with pytest.raises(TypeError, match="Channel"):
        Figure("f", ["loss.loss"])
    with pytest.raises(ValueError, match="twice"):
        Monitor({"a": [Channel("c", "loss.loss")], "b": [Channel("c", "epoch.loss")]})
    with pytest.raises(KeyError, match="no channel 'nope'"):
        Monitor().series("nope")


def test_default_layout_names_the_issue_channels():
    names = [c.name for f in DEFAULT_FIGURES for c in f.channels]
    for wanted in ("train cost", "train loss", "validation loss", "per-example time", "epoch time",
                   "learning rate", "train error", "test error"):
        assert wanted in names
    assert Monitor().channels == names


def test_moving_averages_and_derived_fields():
    rng = np.random.default_rng(0)
    losses = rng.random(30)
    rates = 1000 + 100 * rng.random(30)
    accuracy = rng.random(30)
    monitor = Monitor({"m": [Channel("cost", "loss.loss", window=7),
                             Channel("raw", "loss.loss"),
                             Channel("time", "loss.example_time", window=3),
                             Channel("error", "loss.error", window=4)]})
    for i in range(30):
        monitor.update(ev("loss", i + 1, 100.0 + i, step=2 * i + 1, loss=losses[i],
                          images_per_s=rates[i], accuracy=accuracy[i], lr=0.1))
    cost = monitor.series("cost")
    np.testing.assert_array_equal(cost.steps, 2 * np.arange(30) + 1)
    np.testing.assert_array_equal(cost.times, 100.0 + np.arange(30))
    np.testing.assert_allclose(cost.values, losses)
    np.testing.assert_allclose(cost.averages, trailing_mean(losses, 7))
    np.testing.assert_allclose(monitor.series("raw").averages, losses)  # window 1: the values
    np.testing.assert_allclose(monitor.series("time").values, 1 / rates)
    np.testing.assert_allclose(monitor.series("time").averages, trailing_mean(1 / rates, 3))
    np.testing.assert_allclose(monitor.series("error").values, 1 - accuracy)
    assert cost.last == pytest.approx(losses[-1])
    assert cost.last_average == pytest.approx(np.mean(losses[-7:]))
    assert len(cost) == 30 and "30 points" in repr(cost)


def test_non_finite_values_and_events_that_feed_nothing():
    monitor = Monitor({"m": [Channel("cost", "loss.loss", window=2)]})
    monitor.update(ev("loss", 1, 1.0, step=1, loss=1.0))
    monitor.update(ev("loss", 2, 2.0, step=2, loss="nan"))  # how events carry NaN
    monitor.update(ev("loss", 3, 3.0, step=3, loss=3.0))
    monitor.update(ev("loss", 4, 4.0, step=4, loss=5.0))
    monitor.update(ev("loss", 5, 5.0, loss=7.0))               # no step: no point
    monitor.update(ev("heartbeat", 6, 6.0, step=4, status="started"))
    monitor.update(ev("loss", 7, 7.0, step=5, loss=True))      # not a number
    s = monitor.series("cost")
    assert list(s.steps) == [1, 2, 3, 4]
    assert math.isnan(s.values[1]) and math.isnan(s.averages[1]) and math.isnan(s.averages[2])
    assert s.averages[3] == pytest.approx(4.0)  # the NaN left the window


def test_epoch_time_leaves_out_pauses_and_idle_time():
    monitor = Monitor()
    events = [ev("status", 1, 100.0, state="started", step=0),
              ev("epoch", 2, 103.0, epoch=0, step=10, loss=0.5),     # 3 s
              ev("status", 3, 104.0, state="paused", step=12),
              ev("status", 4, 110.0, state="resumed", step=12),
              ev("epoch", 5, 112.0, epoch=1, step=20, loss=0.4),     # 1 + 2 s
              ev("status", 6, 113.0, state="finished", step=20),
              ev("status", 7, 200.0, state="resumed", step=20),      # run_until, 87 s later
              ev("epoch", 8, 201.5, epoch=2, step=30, loss=0.3)]     # 1 + 1.5 s
    derived = [monitor.update(e) for e in events]
    s = monitor.series("epoch time")
    np.testing.assert_allclose(s.values, [3.0, 3.0, 2.5])
    assert list(s.steps) == [10, 20, 30]
    assert derived[-1]["epoch_time"] == pytest.approx(2.5) and "epoch_time" not in events[-1]
    np.testing.assert_allclose(monitor.series("train loss").values, [0.5, 0.4, 0.3])


def test_epoch_time_needs_a_start():
    monitor = Monitor()  # joined mid-run: the first epoch's start is unknown, so no point
    monitor.update(ev("epoch", 9, 50.0, epoch=3, step=40, loss=0.1))
    assert len(monitor.series("epoch time")) == 0
    assert len(monitor.series("train loss")) == 1


def test_user_layout_callable_source_listener_and_status():
    monitor = Monitor({"speed": [Channel("images/s", "loss.images_per_s", window=2)],
                       "custom": Figure("custom", (Channel("double loss",
                                                           lambda e: 2 * e["loss"] if e["type"] == "loss" else None),),
                                        ylabel="x2", logy=True)})
    assert [f.title for f in monitor.figures] == ["speed", "custom"] and monitor.figures[1].logy
    points = []
    remove = monitor.on_point(lambda *p: points.append(p))
    version = monitor.version
    monitor.update(ev("status", 1, 1.0, state="started", step=0))
    monitor.update(ev("loss", 2, 2.0, step=1, epoch=0, batch=0, loss=0.25, lr=0.1, images_per_s=500.0))
    assert monitor.version == version + 2
    assert points == [("speed", "images/s", 1, 500.0, 2.0), ("custom", "double loss", 1, 0.5, 2.0)]
    remove()
    monitor.update(ev("loss", 3, 3.0, step=2, epoch=0, batch=1, loss=0.5, lr=0.1, images_per_s=700.0))
    assert len(points) == 2
    assert monitor.series("images/s").last_average == pytest.approx(600.0)
    monitor.update(ev("epoch", 4, 4.0, epoch=0, step=2, loss=0.3, train_error=0.1, test_error=0.2))
    monitor.update(ev("error", 5, 5.0, message="bad thing"))
    s = monitor.status
    assert (s.run, s.state, s.step, s.epoch, s.batch, s.loss, s.lr) == ("r1", "started", 2, 1, None, 0.5, 0.1)
    assert (s.train_error, s.test_error, s.last_epoch, s.last_time) == (0.1, 0.2, 0, 5.0)
    assert s.errors == ["bad thing"] and not s.ended
    monitor.update(ev("status", 6, 6.0, state="failed", step=2))
    assert monitor.status.ended


def test_read_file_is_incremental_and_skips_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(ev("loss", i + 1, float(i), step=i + 1, loss=float(i))) for i in range(5)]
    path.write_text("\n".join(lines[:3]) + "\nnot json\n" + lines[3][:10])  # a partial last line
    monitor = Monitor()
    assert monitor.read_file(path) == 3 and monitor.bad_lines == 1
    assert list(monitor.series("train cost").steps) == [1, 2, 3]
    with open(path, "a") as f:
        f.write(lines[3][10:] + "\n" + lines[4] + "\n")
    assert monitor.read_file(path) == 2 and monitor.read_file(path) == 0
    np.testing.assert_array_equal(monitor.series("train cost").values, np.arange(5.0))
    assert len(monitor_file(path).series("train cost")) == 5


def test_attach_mid_run_misses_nothing_and_counts_nothing_twice():
    x, y = toy_data(256)
    run = mlp().fit(x, y, batch_size=16, epochs=6, verbose=0, validation_split=0.25, background=True,
                    callbacks=[LambdaCallback(on_batch_end=lambda b, l: time.sleep(0.004))])
    wait_until(lambda: len(run.events("loss")) >= 5)
    monitor = Monitor()
    detach = monitor.attach(run)  # past events replayed, new ones live, while training goes on
    assert run.wait(30) == "finished"
    run.wait_for(run.shutdown())
    assert run.join(10)
    detach()
    losses = run.events("loss")
    epochs = run.events("epoch")
    assert len(epochs) == 6
    cost = monitor.series("train cost")
    assert list(cost.steps) == [e["step"] for e in losses]
    np.testing.assert_allclose(cost.values, [e["loss"] for e in losses])
    np.testing.assert_allclose(cost.averages, trailing_mean([e["loss"] for e in losses], 50))
    np.testing.assert_allclose(monitor.series("validation loss").values, [e["val_loss"] for e in epochs])
    np.testing.assert_allclose(monitor.series("train error").values, [e["train_error"] for e in epochs])
    times = monitor.series("epoch time").values
    assert len(times) == 6 and np.all(times > 0)
    stamps = [e["time"] for e in epochs]
    assert times[1:] == pytest.approx(np.diff(stamps), abs=1e-9)  # no pause: wall-clock gaps
    assert monitor.status.state == run.events("status")[-1]["state"]
    assert monitor.status.step == run.global_step


def test_test_events_feed_the_test_error_and_validation_loss_channels():
    """nnkit train's test passes inside an epoch (test_freq) and its final test are test events:
    a run shorter than an epoch has a test error in every view."""
    monitor = Monitor()
    points = []
    monitor.on_point(lambda *p: points.append(p[:4]))  # what the TensorBoard writer sees
    monitor.update(ev("status", 1, 1.0, state="started", step=0))
    monitor.update(ev("test", 2, 2.0, step=10, epoch=0, loss=0.5, accuracy=0.8))
    monitor.update(ev("test", 3, 3.0, step=20, epoch=0, loss=0.4, accuracy=0.9))
    error, loss = monitor.series("test error"), monitor.series("validation loss")
    assert list(error.steps) == [10, 20] and error.values == pytest.approx([0.2, 0.1])
    assert list(loss.steps) == [10, 20] and loss.values == pytest.approx([0.5, 0.4])
    assert ("error", "test error", 20, pytest.approx(0.1)) in points
    assert (monitor.status.test_error, monitor.status.test_step) == (pytest.approx(0.1), 20)

    # An epoch end and the test event of the same pass (test_freq divides the step, or the
    # final test of a run ending with an epoch): one point, whichever came first.
    monitor.update(ev("epoch", 4, 4.0, epoch=0, step=30, loss=0.3, val_loss=0.35, train_error=0.1,
                      test_error=0.05))
    monitor.update(ev("test", 5, 4.1, step=30, epoch=1, loss=0.35, accuracy=0.95))
    assert list(error.steps) == [10, 20, 30] and error.values[-1] == pytest.approx(0.05)
    assert list(loss.steps) == [10, 20, 30]
    assert (monitor.status.test_error, monitor.status.test_step) == (pytest.approx(0.05), 30)
    monitor.update(ev("test", 6, 5.0, step=40, epoch=1, loss=0.3))  # no accuracy: no error point
    assert list(error.steps) == [10, 20, 30] and list(loss.steps) == [10, 20, 30, 40]


def test_a_channel_may_take_several_sources():
    monitor = Monitor({"f": [Channel("either", ("loss.loss", "test.loss")),
                             Channel("one", "loss.loss")]})
    order = [("loss", 1), ("test", 1), ("test", 2), ("loss", 2), ("loss", 2)]
    for seq, (kind, step) in enumerate(order):
        monitor.update(ev(kind, seq + 1, float(seq), step=step, loss=float(seq)))
    assert list(monitor.series("either").steps) == [1, 2]          # one point per step
    assert monitor.series("either").values.tolist() == [0.0, 2.0]  # the first to come
    assert list(monitor.series("one").steps) == [1, 2, 2]          # a single source keeps all
    assert Channel("x", ["loss.loss", "test.loss"]).source == ("loss.loss", "test.loss")
    with pytest.raises(ValueError, match="TYPE.FIELD"):
        Channel("x", ("loss.loss", "test"))
    with pytest.raises(TypeError, match="source"):
        Channel("x", ())


def test_series_arrays_hold_exactly_the_points_of_a_real_run(tmp_path):
    """The compact storage (arrays of machine numbers) against the plain Python lists it
    replaced, on a real run's event stream plus the values that need care: every point the
    monitor reports is stored as it was, and each average is the sum of its window's values."""
    import collections
    x, y = toy_data()
    mlp().fit(x, y, batch_size=16, epochs=3, verbose=0, validation_split=0.25, run_dir=tmp_path / "run")
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    step = max(e.get("step", 0) for e in events)
    events += [ev("loss", 10_000 + i, 2e9 + i, step=step + 1 + i, loss=v, lr=0.1, accuracy=0.5,
                  images_per_s=r)
               for i, (v, r) in enumerate([("nan", 0), (1e300, 3.0), ("-inf", 1e-300), (-0.0, 7),
                                           (2**53 + 1, 0.5), (5e-324, 1e300)] + [(0.1 * i, 9) for i in range(60)])]
    events.append(ev("loss", 20_000, 3e9, step=2**63, loss=1.0))  # beyond a 64-bit step: no point
    monitor = Monitor()
    points = collections.defaultdict(list)
    monitor.on_point(lambda figure, name, step, value, wall: points[name].append((step, wall, value)))
    for event in events:
        monitor.update(event)
    assert len(points["train cost"]) > 60 and points["test error"] and points["epoch time"]
    for name in monitor.channels:
        series, kept = monitor.series(name), points[name]
        window, averages = collections.deque(maxlen=series.channel.window), []
        for _, _, value in kept:  # the old Series' own arithmetic, on a list
            window.append(value)
            averages.append(sum(window) / len(window))
        steps = np.array([p[0] for p in kept], dtype=np.int64)
        assert series.steps.dtype == np.int64 and len(series) == len(kept)
        np.testing.assert_array_equal(series.steps, steps)
        np.testing.assert_array_equal(series.times, np.array([p[1] for p in kept]))
        np.testing.assert_array_equal(series.values, np.array([p[2] for p in kept]))
        np.testing.assert_array_equal(series.averages, np.array(averages))
        for start in (0, 1, len(kept) // 2, len(kept), len(kept) + 3):
            for got, want in zip(series.data(start), (steps, [p[2] for p in kept], averages)):
                np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype)[start:])
        if kept:
            assert series.last == kept[-1][2] or math.isnan(series.last)
            assert type(series.last) is float and type(series.last_average) is float
    assert monitor.series("train cost").steps[-1] == step + 66  # the 2**63 step made no point
    assert monitor.status.step == 2**63


def test_read_file_of_a_long_file_fed_a_piece_at_a_time_misses_nothing(tmp_path):
    """Parsed a piece at a time (lines cut at the pieces' edges), a long file feeds the monitor
    exactly its lines' events; a bad line is counted, a partial last line waits."""
    from nnkit.training.events import PIECE
    lines = [json.dumps(ev("loss", i + 1, float(i), step=i + 1, loss=1 / (1 + i), lr=0.1, accuracy=0.5,
                           images_per_s=100.0 + i)) for i in range(3000)]
    lines[1700] = "not json"
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n" + lines[0][:9])
    assert path.stat().st_size > 3 * PIECE
    monitor, reference = Monitor(), Monitor()
    assert monitor.read_file(path) == 2999 and monitor.bad_lines == 1
    for line in lines[:1700] + lines[1701:]:
        reference.update(json.loads(line))
    with open(path, "a") as f:
        f.write(lines[0][9:] + "\n")
    assert monitor.read_file(path) == 1 and monitor.read_file(path) == 0
    reference.update(json.loads(lines[0]))
    assert monitor.status == reference.status
    for name in reference.channels:
        for got, want in zip(monitor.series(name).data(), reference.series(name).data()):
            np.testing.assert_array_equal(got, want)
    assert len(monitor.series("train cost")) == 3000
