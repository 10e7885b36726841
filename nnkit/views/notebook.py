"""Watch and steer a background run from a Jupyter notebook: ``view = nnkit.views.notebook.show(run)``.

The view (:class:`TrainingView`) has Stop and Pause/Resume buttons, a learning-rate field, a
run-until field, a status line (status, epoch, batch, loss, lr, images/s), a line with the
answer to the last command, and a live plot of the loss and the train/test error. The plot
data come from a :class:`~nnkit.training.Monitor` (named channels with moving averages,
grouped into figures; pass ``figures=`` for another layout). Needs the ``notebook`` extra:
``pip install 'nnkit[notebook]'`` (ipywidgets, matplotlib; and ipykernel and JupyterLab,
to run ``examples/interactive.ipynb``).

Where the refreshing happens, and why never in the training thread:

* The view *polls* ``run.events(since=last_seq)`` from an asyncio task on the kernel's own
  event loop (the loop ipykernel handles its messages on, in the main thread), a few times a
  second. The task runs whenever the kernel is idle between cells, or while a cell awaits
  (``await asyncio.sleep(...)``); a cell that blocks (``run.wait()``) holds it up.
* Widget updates become comm messages and matplotlib draws into shared figure state; neither
  is safe to drive from a second thread while the main thread uses them too.
* A subscriber callback (``run.subscribe``) runs *in the training thread*: drawing there would
  add a tenth of a second to a batch. Polling costs the run only a lock-protected copy of the
  new events, and a burst of events (10,000 acks) becomes one redraw. The view feeds its
  Monitor itself, from the same poll, so the Monitor never runs in the training thread either.

Without a running event loop (a plain Python session, a test) nothing refreshes by itself:
call :meth:`TrainingView.refresh`.
"""
from __future__ import annotations

import asyncio
import html
import io
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import ipywidgets as widgets
    from matplotlib.figure import Figure as MplFigure
except ImportError as exc:  # the view is an optional extra; say which one
    _missing = exc.name.partition(".")[0] if exc.name else str(exc)
    raise ImportError(f"nnkit.views.notebook needs ipywidgets and matplotlib ({_missing} is missing); "
                      "install them with: pip install 'nnkit[notebook]'") from exc

import numpy as np

from ..training.events import RUNNING_STATES, Event, answer_fields
from ..training.run import RunHandle
from .channels import DEFAULT_FIGURES, Channel, Figure, Monitor
from .report import draw_figure

__all__ = ["VIEW_FIGURES", "TrainingView", "show"]

VIEW_FIGURES: tuple[Figure, ...] = tuple(f for f in DEFAULT_FIGURES if f.title in ("loss", "error"))
"""The view's default plot: the Monitor's loss and error figures."""

_PLOT_POINTS = 500  # decimate longer series: drawing cost grows with points, the PNG is ~600 px wide
_PLOT_SHARE = 0.1   # the plot may take at most this share of the kernel thread's time


def _describe(command: Any, fields: Mapping[str, Any]) -> str:
    """``set lr=0.02``, ``run_until target_step=500``, ``stop``: a command and what it did."""
    args = fields.get("values") or {k: v for k, v in answer_fields(fields).items() if v is not None}
    return " ".join([str(command), *(f"{k}={v}" for k, v in args.items())])


class TrainingView:
    """A notebook widget that shows a training run and steers it.

    ``run``: a :class:`~nnkit.training.TrainingRun` (``model.fit(..., background=True)``) or
    any run handle with the same commands and ``events``/``join``. ``interval``: seconds
    between refreshes of the status line; the plot is redrawn only when a point was added, at
    most every ``plot_interval`` seconds, and spaced so drawing takes at most a tenth of the
    time (drawing holds the GIL, which the training thread needs between its kernel calls).
    ``figures``: the Monitor layout to plot (default :data:`VIEW_FIGURES`). ``autostart``:
    refresh from this thread's running asyncio loop, if there is one (in a notebook: the
    kernel's).

    Display it by leaving it as a cell's value, or use :func:`show`. The widgets are attributes
    (``stop_button``, ``pause_button``, ``lr_field``, ``lr_button``, ``until_field``,
    ``until_button``, ``status``, ``message``, ``plot``), so code can drive them like a user:
    ``view.stop_button.click()``. ``status_text`` and ``message_text`` hold the two text lines.
    """

    def __init__(self, run: RunHandle, interval: float = 0.25, plot_interval: float = 1.0,
                 figures: Sequence[Figure] | Mapping[str, Sequence[Channel] | Figure] | None = None,
                 autostart: bool = True) -> None:
        self.run = run
        self.interval = interval
        self.plot_interval = plot_interval
        self.monitor = Monitor(VIEW_FIGURES if figures is None else figures)
        self.refresh_count = 0
        self.status_text = ""
        self.message_text = ""
        self._last_seq = 0
        self._sent: dict[str, str] = {}  # command id -> what this view sent
        self._ended = False
        self._drawn: tuple[int, ...] = ()  # the series lengths the plot shows
        self._next_plot = -math.inf      # monotonic time of the next allowed redraw
        self._task: asyncio.Task | None = None
        self._build_widgets()
        self._build_figure()
        self._show_status()
        if autostart:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass  # no loop in this thread: refresh() by hand
            else:
                self.start()

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        lr = getattr(getattr(getattr(self.run, "model", None), "updater", None), "lr", None)
        self._lr_known = lr is not None  # else filled in from the first event that names it
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop")
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.lr_field = widgets.FloatText(value=lr or 0.0, description="lr",
                                          layout=widgets.Layout(width="180px"))
        self.lr_button = widgets.Button(description="Set lr")
        self.until_field = widgets.IntText(value=getattr(self.run, "global_step", 0) + 100,
                                           description="until batch",
                                           style={"description_width": "initial"},
                                           layout=widgets.Layout(width="200px"))
        self.until_button = widgets.Button(description="Run until")
        self.status = widgets.HTML()
        self.message = widgets.HTML()
        self.plot = widgets.Image(format="png")
        self.stop_button.on_click(self._on_stop)
        self.pause_button.on_click(self._on_pause)
        self.lr_button.on_click(self._on_set_lr)
        self.until_button.on_click(self._on_run_until)
        self.controls = [self.stop_button, self.pause_button, self.lr_field, self.lr_button,
                         self.until_field, self.until_button]
        rows = [widgets.HBox(self.controls[:2]), widgets.HBox(self.controls[2:])]
        self.widget = widgets.VBox([*rows, self.status, self.message, self.plot])
        self._widgets = [*self.controls, self.status, self.message, self.plot, *rows, self.widget]

    def _build_figure(self) -> None:
        # A bare matplotlib Figure, not pyplot: no global backend or figure manager is touched,
        # so it draws headless (nbclient, no ipympl) and never shows a second static copy.
        # Fixed margins rather than a layout engine, which would double the cost of each redraw.
        figures = self.monitor.figures
        height = 2.4 * len(figures)
        self.figure = MplFigure(figsize=(7.5, height), dpi=80)
        self.figure.subplots_adjust(left=0.1, right=0.98, bottom=0.5 / height, top=1 - 0.3 / height,
                                    hspace=0.4)
        axes = self.figure.subplots(len(figures), 1, sharex=True, squeeze=False)[:, 0]
        self._axes = list(zip(axes, figures))
        self._draw()  # the empty axes, until the first points
        self._next_plot = -math.inf  # which then show at once

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Shows the widget when the view is a cell's value."""
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ buttons
    def _send(self, name: str, **args: Any) -> None:
        """Sends command ``name`` through the handle (its table-made method) and says so; the
        answer shows on refresh."""
        label = " ".join([name, *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in args.items())])
        if self.run.join(0):
            self._say(f"the run has ended ({self.run.status}); {label} not sent", error=True)
            return
        self._sent[getattr(self.run, name)(**args)] = label
        self._say(f"{label}: sent, waiting for the next safe point")

    def _on_stop(self, _button: Any = None) -> None:
        self._send("stop")

    def _on_pause(self, _button: Any = None) -> None:
        self._send("resume" if self.monitor.status.state == "paused" else "pause")

    def _on_set_lr(self, _button: Any = None) -> None:
        self._send("set", lr=float(self.lr_field.value))

    def _on_run_until(self, _button: Any = None) -> None:
        self._send("run_until", batches=int(self.until_field.value))

    # ------------------------------------------------------------------ refreshing
    def refresh(self) -> bool:
        """Reads the run's new events and updates the status line, the message and the plot.

        Call it from the thread that owns the widgets (the kernel's main thread), as the
        automatic refresh does. Returns True when there were new events.
        """
        events = self.run.events(since=self._last_seq)
        for event in events:
            self.monitor.update(event)
            self._answer(event)
        if events:
            self._last_seq = events[-1]["seq"]
        ended = self.run.join(0)  # the thread (or child process) is gone: nothing more to come
        if ended and not self._ended:
            self._ended = True
            for control in self.controls:
                control.disabled = True
        paused = self.monitor.status.state == "paused"
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        if not self._lr_known and self.monitor.status.lr is not None:
            self.lr_field.value, self._lr_known = self.monitor.status.lr, True
        self._show_status()
        changed = self._plot_signature() != self._drawn
        if changed and (ended or time.monotonic() >= self._next_plot):
            self._draw()
        self.refresh_count += 1
        return bool(events)

    def _answer(self, event: Event) -> None:
        """Shows acks and errors: of this view's commands, and of any other (a handle, nnkit ctl)."""
        kind = event.get("type")
        if kind == "ack":
            label = self._sent.pop(event.get("id"), None) or _describe(event.get("command"), event)
            self._say(f"{label}: done at batch {event.get('step')}")
        elif kind == "error":
            label = self._sent.pop(event.get("id"), None) or event.get("command") or "run"
            self._say(f"{label}: error: {event.get('message')}", error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.message_text = text
        color = "#b00" if error else "#333"
        self.message.value = f'<span style="color:{color}">{html.escape(text)}</span>'

    def _show_status(self) -> None:
        s = self.monitor.status
        # Epochs counted from 1 as in every view ("epoch 2 done" between two); batch: the step.
        parts = ["training" if s.state in RUNNING_STATES else s.state, s.epoch_text, f"batch {s.step}"]
        if s.loss is not None:
            parts.append(f"loss {s.loss:.4g}")  # any magnitude: a diverging run's 1.3e30 too
        if s.lr is not None:
            parts.append(f"lr {s.lr:.4g}")
        if s.images_per_s is not None and s.state in RUNNING_STATES:
            parts.append(f"{s.images_per_s:,.0f} images/s")  # a stale rate would mislead
        self.status_text = " · ".join(parts)
        self.status.value = f"<b>{html.escape(self.status_text)}</b>"

    @property
    def plot_data(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """What the plot shows: ``channel name -> (batches, values, moving averages)``."""
        return {name: self.monitor.series(name).data() for name in self.monitor.channels}

    def _plot_signature(self) -> tuple[int, ...]:
        """The number of points of each plotted series: redraw only when it changes (status
        events and heartbeats add none)."""
        return tuple(len(self.monitor.series(name)) for name in self.monitor.channels)

    def _draw(self) -> None:
        """Redraws the figure into the Image widget as a PNG."""
        started = time.monotonic()
        drawn = self._plot_signature()  # taken first: a point added meanwhile redraws next time
        for ax, figure in self._axes:
            draw_figure(ax, figure, self.monitor, max_points=_PLOT_POINTS)  # as nnkit plot draws it
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        self.plot.value = buffer.getvalue()
        self._drawn = drawn
        # Drawing holds the GIL for ~0.1 s, which a fast training loop (releasing and retaking
        # the GIL many times a batch) feels several times over: space redraws so they take at
        # most _PLOT_SHARE of the time, and never come more often than plot_interval.
        now = time.monotonic()
        self._next_plot = now + max(self.plot_interval, (now - started) / _PLOT_SHARE)

    # ------------------------------------------------------------------ the refresh task
    def start(self) -> asyncio.Task:
        """Refreshes every ``interval`` seconds from this thread's running asyncio loop.

        In a notebook that is the kernel's loop. The task ends by itself once the run has
        ended and its last events are shown.
        """
        if self._task is not None and not self._task.done():
            return self._task
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop())
        return self._task

    async def _refresh_loop(self) -> None:
        try:
            while True:
                self.refresh()
                if self._ended:
                    return
                await asyncio.sleep(self.interval)
        except Exception as exc:  # noqa: BLE001  (a task's exception would vanish unseen: show it)
            self._say(f"the view stopped refreshing: {type(exc).__name__}: {exc}", error=True)

    def close(self) -> None:
        """Stops refreshing and closes the widgets (the run goes on)."""
        if self._task is not None:
            self._task.cancel()
        for widget in self._widgets:
            widget.close()


def show(run: RunHandle, **kwargs: Any) -> TrainingView:
    """Displays a :class:`TrainingView` of ``run`` in the notebook and returns it."""
    from IPython.display import display  # ipywidgets depends on IPython

    view = TrainingView(run, **kwargs)
    display(view.widget)
    return view
