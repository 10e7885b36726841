"""Plots of a run: ``nnkit plot RUN_DIR`` writes one PNG per figure of a channel layout.

The plots come from the run's ``events.jsonl`` (a finished run, or one still training: a
partial last line is left out), through a :class:`~nnkit.training.Monitor`, so they show
the same channels and moving averages as the other views. Each PNG is written to a
temporary file and renamed, so a reader never sees half an image.

matplotlib is optional (``pip install 'nnkit[report]'``); it is imported only here and
drawn through its object API on the Agg canvas, so the caller's pyplot backend is left alone.
:func:`draw_figure` draws one figure on any matplotlib ``Axes`` (the notebook view uses it).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write
from ..training.events import EVENTS_FILE
from .channels import Figure, Monitor, RunStatus, monitor_file

PLOTS_DIR = "plots"


class MissingDependency(ImportError):
    """An optional dependency (matplotlib) is not installed."""


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or :class:`MissingDependency` saying how to install it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependency("plots need matplotlib, an optional dependency: "
                                "pip install 'nnkit[report]' (or pip install matplotlib)") from exc
    return matplotlib


def draw_figure(ax: Any, figure: Figure, monitor: Monitor, max_points: int | None = None) -> None:
    """Draws ``figure``'s channels from ``monitor`` on the matplotlib Axes ``ax``.

    A channel with a moving-average window shows its raw values faintly and the average
    boldly; others show their values (with markers when there are few points). With
    ``max_points``, longer series are thinned to about that many points (drawing cost grows
    with points; a live view redraws often).
    """
    ax.clear()
    drawn = 0
    for index, channel in enumerate(figure.channels):
        steps, values, averages = monitor.series(channel.name).data()
        if not len(steps):
            continue
        if max_points:
            stride = max(1, len(steps) // max_points)
            steps, values, averages = steps[::stride], values[::stride], averages[::stride]
        color = f"C{index % 10}"
        if channel.window > 1:
            ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
            ax.plot(steps, averages, color=color, linewidth=1.8,
                    label=f"{channel.name} (mean of {channel.window})")
        else:
            ax.plot(steps, values, color=color, linewidth=1.5, label=channel.name,
                    marker="o" if len(steps) <= 50 else None, markersize=3)
        drawn += 1
    ax.set_title(figure.title)
    ax.set_xlabel("step (batches)")
    if figure.ylabel:
        ax.set_ylabel(figure.ylabel)
    if drawn:
        if figure.logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes,
                color="gray")


def file_name(title: str) -> str:
    """``"per-example time"`` -> ``"per-example_time.png"``."""
    return (re.sub(r"[^A-Za-z0-9._-]+", "_", title).strip("_") or "figure") + ".png"


def caption(status: RunStatus) -> str:
    """A plot's subtitle: ``run 3f2a9c1b7e4d: finished at step 1876, epoch 2 done`` (epochs
    counted from 1, as in every view)."""
    return f"run {status.run or '?'}: {status.state} at step {status.step}, {status.epoch_text}"


def render_png(figure: Figure, monitor: Monitor, size: tuple[float, float] = (8, 4.5),
               dpi: int = 100) -> bytes:
    """The PNG bytes of one figure, with the run id, status, step and epoch in a subtitle."""
    require_matplotlib()
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as PlotFigure

    plot = PlotFigure(figsize=size, dpi=dpi)
    FigureCanvasAgg(plot)
    ax = plot.add_subplot(1, 1, 1)
    draw_figure(ax, figure, monitor)
    plot.text(0.99, 0.01, caption(monitor.status), ha="right", va="bottom", fontsize="x-small",
              color="gray")
    plot.tight_layout()
    buffer = io.BytesIO()
    plot.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
             figures: Sequence[Figure] | Mapping[str, Any] | None = None, dpi: int = 100
             ) -> list[Path]:
    """Writes one PNG per figure of a run directory's events into ``out`` (default RUN_DIR/plots).

    Returns the paths written. Raises FileNotFoundError if the run has no event file.
    """
    require_matplotlib()
    events = Path(run_dir) / EVENTS_FILE
    if not events.is_file():
        raise FileNotFoundError(f"{events}: no such event file (is {run_dir} a run directory?)")
    monitor = monitor_file(events, figures)
    out = Path(run_dir) / PLOTS_DIR if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in monitor.figures:
        path = out / file_name(figure.title)
        atomic_write(path, render_png(figure, monitor, dpi=dpi))
        written.append(path)
    return written
