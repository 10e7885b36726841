"""Kernels release the GIL: a heartbeat thread stays on time while a big CNN step runs."""
import sys
import threading
import time

import numpy as np

from gradcheck import Source
from nnkit.layers import LRN2D, Activation, Convolution2D, MaxPooling2D

PERIOD = 0.01


def worst_heartbeat_delay(work) -> tuple[float, float]:
    """Runs ``work`` in a thread; returns (worst heartbeat lateness, work duration) in seconds."""
    done = threading.Event()
    lateness = []

    def heartbeat():
        while not done.is_set():
            start = time.perf_counter()
            time.sleep(PERIOD)
            lateness.append(time.perf_counter() - start - PERIOD)

    beat = threading.Thread(target=heartbeat)
    beat.start()
    time.sleep(0.05)  # let the heartbeat settle before the work starts
    start = time.perf_counter()
    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    duration = time.perf_counter() - start
    done.set()
    beat.join()
    return max(lateness), duration


def test_heartbeat_is_never_late_while_a_large_cnn_step_runs():
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        x = np.random.default_rng(0).standard_normal((64, 32, 32, 32)).astype(np.float32)
        layers = [Convolution2D(64, 5, 1, 2), Activation("relu"), MaxPooling2D((3, 3), 2),
                  LRN2D(3, alpha=5e-5, beta=0.75)]

        def cnn_step():
            for _ in range(5):  # long enough (> 0.5 s) even with the kernels in parallel
                src = Source(x)
                below = src
                for layer in layers:
                    layer.ComputeFeature(below)
                    below = layer
                layers[-1].grad = np.ones_like(layers[-1].data)
                for layer in reversed(layers):
                    layer.ComputeGradient()

        late, duration = worst_heartbeat_delay(cnn_step)
        # The control: a C call that holds the GIL for as long makes the heartbeat late,
        # so this measurement can tell the two apart.
        n = 10**7
        control_late, _ = worst_heartbeat_delay(lambda: sum(range(n)))
    finally:
        sys.setswitchinterval(old)
    assert duration > 0.5, f"the CNN step took only {duration:.3f} s: too short to prove anything"
    assert control_late > 0.05, f"control: a GIL-holding call delayed the heartbeat only {control_late:.3f} s"
    assert late < 0.05, f"heartbeat was {late * 1000:.0f} ms late while kernels ran"
