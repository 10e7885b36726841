"""``nnkit plot`` and nnkit.report: PNGs per figure from a run's events, written atomically."""
import json
import stat
import sys

import numpy as np
import pytest
from test_model import mlp, toy_data

from nnkit.cli import main
from nnkit.views.report import (
    MissingDependency,
    draw_figure,
    file_name,
    plot_run,
    require_matplotlib,
)
from nnkit.views import Channel, Figure, Monitor, monitor_file

matplotlib = pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real finished run directory."""
    path = tmp_path_factory.mktemp("run")
    x, y = toy_data(256)
    mlp().fit(x, y, batch_size=16, epochs=4, verbose=0, validation_split=0.25, run_dir=path)
    return path


def test_plot_writes_one_readable_png_per_figure(run_dir, tmp_path):
    from matplotlib.image import imread
    paths = plot_run(run_dir, tmp_path / "plots", dpi=50)
    monitor = Monitor()
    assert [p.name for p in paths] == [file_name(f.title) for f in monitor.figures]
    assert [p.name for p in paths] == ["loss.png", "error.png", "learning_rate.png",
                                       "per-example_time.png", "epoch_time.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)
    for path in paths:  # no temporary files left; readable by everyone; a real image
        assert path.read_bytes().startswith(PNG)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        image = imread(path)
        assert image.shape == (225, 400, 4)
        assert image[..., :3].std() > 0.05  # not blank


def test_draw_figure_plots_the_series_and_their_averages(run_dir):
    from matplotlib.figure import Figure as PlotFigure
    monitor = monitor_file(run_dir / "events.jsonl")
    loss = monitor.figures[0]
    ax = PlotFigure().add_subplot(1, 1, 1)
    draw_figure(ax, loss, monitor)
    lines = ax.get_lines()
    cost = monitor.series("train cost")
    assert len(lines) == 4  # cost raw + average, train loss, validation loss
    np.testing.assert_array_equal(lines[0].get_xdata(), cost.steps)
    np.testing.assert_allclose(lines[0].get_ydata(), cost.values)
    np.testing.assert_allclose(lines[1].get_ydata(), cost.averages)
    np.testing.assert_allclose(lines[3].get_ydata(), monitor.series("validation loss").values)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train cost (mean of 50)", "train loss", "validation loss"]
    assert ax.get_title() == "loss" and ax.get_xlabel() == "step (batches)"

    empty = Figure("nothing", (Channel("never", "epoch.no_such_field"),), logy=True)
    draw_figure(ax, empty, Monitor([empty]))
    assert not ax.get_lines() and ax.texts[0].get_text() == "no data yet"


def test_plot_of_a_running_run_with_a_partial_line_and_a_user_layout(run_dir, tmp_path):
    live = tmp_path / "live"
    live.mkdir()
    text = (run_dir / "events.jsonl").read_text()
    (live / "events.jsonl").write_text(text + '{"schema": 1, "type": "lo')  # still being written
    figures = [Figure("cost", (Channel("train cost", "loss.loss", window=3),), logy=True)]
    (path,) = plot_run(live, figures=figures)
    assert path == live / "plots" / "cost.png" and path.read_bytes().startswith(PNG)
    losses = [json.loads(line) for line in text.splitlines() if '"type":"loss"' in line]
    assert len(monitor_file(live / "events.jsonl").series("train cost")) == len(losses)


def test_nnkit_plot_command(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "out"), "--dpi", "40"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / n) for n in
                       ("loss.png", "error.png", "learning_rate.png", "per-example_time.png",
                        "epoch_time.png")]
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such event file" in capsys.readouterr().err


def test_a_clear_error_without_matplotlib(run_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(MissingDependency, match=r"pip install 'nnkit\[report\]'"):
        require_matplotlib()
    assert main(["plot", str(run_dir)]) == 1
    assert "nnkit[report]" in capsys.readouterr().err


def test_plot_shows_the_test_passes_of_a_run_shorter_than_an_epoch(tmp_path):
    """nnkit train's test events (test_freq, the final test) are the test error of the plot."""
    from matplotlib.figure import Figure as PlotFigure
    stamp = {"schema": 1, "run": "r"}
    events = [{**stamp, "seq": 1, "time": 1.0, "type": "status", "state": "started", "step": 0}]
    events += [{**stamp, "seq": 1 + s, "time": 1.0 + s, "type": "loss", "step": s, "epoch": 0,
                "batch": s - 1, "loss": 1.0 / s, "accuracy": 0.5} for s in range(1, 21)]
    events += [{**stamp, "seq": 30 + s, "time": 30.0 + s, "type": "test", "step": s, "epoch": 0,
                "loss": 2.0 / s, "accuracy": 1 - 1.0 / s} for s in (10, 20)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    monitor = monitor_file(tmp_path / "events.jsonl")
    error = next(f for f in monitor.figures if f.title == "error")
    ax = PlotFigure().add_subplot(1, 1, 1)
    draw_figure(ax, error, monitor)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["batch error (mean of 50)", "test error"]
    test_line = ax.get_lines()[-1]
    assert test_line.get_xdata().tolist() == [10, 20]
    np.testing.assert_allclose(test_line.get_ydata(), [0.1, 0.05])
    assert [p.name for p in plot_run(tmp_path, dpi=30)][1] == "error.png"
