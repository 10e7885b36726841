"""Views of a run: they read its events and send it commands, nothing else.

``channels`` turns events into named channels grouped into figures (:class:`Monitor`);
``terminal`` is ``nnkit watch``/``nnkit ctl``; ``notebook`` the live Jupyter view; ``report``
PNG plots; ``tensorboard`` TensorBoard scalar files. The notebook, report and TensorBoard
modules need optional extras and are imported only when used.
"""
from .channels import (DEFAULT_FIGURES, Channel, Figure, Monitor, RunStatus, Series, epoch_label,
                       epoch_text, monitor_file, moving_average)

__all__ = ["Channel", "Figure", "Monitor", "Series", "RunStatus", "DEFAULT_FIGURES", "monitor_file",
           "epoch_label", "epoch_text", "moving_average"]
