"""Kernels release the GIL: a heartbeat thread stays on time while a big CNN step runs."""
import sys
import threading
import time

import numpy as np

from gradcheck import Source
from nnkit.layers import LRN2D, Activation, Convolution2D, MaxPooling2D, convolution

PERIOD = 0.01


def heartbeat_rate(work=None, idle: float = 0.3) -> tuple[float, float]:
    """Beats per second of a 10 ms sleep loop while ``work`` runs in another thread (or, with no
    work, over ``idle`` seconds), and how long that took.

    A rate, not the single worst lateness: on a loaded machine the OS alone can make one beat
    late by 50 ms, but a thread that holds the GIL stops the beats for as long as it runs.
    """
    done = threading.Event()
    beats: list[float] = []

    def heartbeat():
        while not done.is_set():
            time.sleep(PERIOD)
            beats.append(time.perf_counter())

    beat = threading.Thread(target=heartbeat)
    beat.start()
    time.sleep(0.05)  # let the heartbeat settle before the work starts
    start = time.perf_counter()
    if work is None:
        time.sleep(idle)
    else:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    end = time.perf_counter()
    done.set()
    beat.join()
    return sum(start <= t <= end for t in beats) / (end - start), end - start


def test_heartbeat_is_never_late_while_a_large_cnn_step_runs():
    old, winograd = sys.getswitchinterval(), convolution.WINOGRAD
    sys.setswitchinterval(0.005)
    try:
        x = np.random.default_rng(0).standard_normal((64, 32, 32, 32)).astype(np.float32)
        layers = [Convolution2D(64, 5, 1, 2), Activation("relu"), MaxPooling2D((3, 3), 2),
                  LRN2D(3, alpha=5e-5, beta=0.75)]

        def cnn_step():
            # Long enough (> 0.5 s) even with the kernels in parallel; the convolution's
            # Winograd route and its im2col route in turn.
            for i in range(8):
                convolution.WINOGRAD = i % 2 == 0
                src = Source(x)
                below = src
                for layer in layers:
                    layer.ComputeFeature(below)
                    below = layer
                layers[-1].grad = np.ones_like(layers[-1].data)
                for layer in reversed(layers):
                    layer.ComputeGradient()

        idle_rate, _ = heartbeat_rate()
        rate, duration = heartbeat_rate(cnn_step)
        # The control: a C call that holds the GIL for as long stops the heartbeat,
        # so this measurement can tell the two apart.
        n = 10**7
        control_rate, _ = heartbeat_rate(lambda: sum(range(n)))
    finally:
        sys.setswitchinterval(old)
        convolution.WINOGRAD = winograd
    assert duration > 0.5, f"the CNN step took only {duration:.3f} s: too short to prove anything"
    assert control_rate < 0.3 * idle_rate, \
        f"control: a GIL-holding call left the heartbeat at {control_rate:.0f}/s (idle {idle_rate:.0f}/s)"
    assert rate > 0.6 * idle_rate, \
        f"the heartbeat ran at {rate:.0f}/s while kernels ran, against {idle_rate:.0f}/s idle"
