"""Dropout: randomly zeroes units while training (inverted dropout, no rescaling at test time)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .._kernels import activations as kernels
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: in training mode each unit is kept with probability ``1 - ratio``
    and kept units are scaled by ``1 / (1 - ratio)``, so the expected output equals the input
    and evaluation needs no rescaling.

    In evaluation mode (``layer.eval()``) the output is a copy of the input in the layer's own
    buffer (never an alias of the source's ``data``), and the gradient passes through.
    Draws come from ``self.rng`` (set by the model or ``set_seed``); without one the layer
    creates a fresh unseeded generator on first use and keeps it. The backward pass reuses
    the mask of the last training-mode forward pass.

    Per-example streams (distributed training): when :attr:`example_stream` is
    ``(step, first)`` (set by a model trained with ``distributed=True``, see
    :meth:`distribute`), the draws come instead from a counter-based Philox stream keyed by the
    layer's generator state (unchanged by these draws, so fixed by the seed) and the step:
    example ``first + i`` of the global batch takes the draws at positions
    ``[(first + i) * U, (first + i + 1) * U)`` of that step's stream, ``U`` units per example.
    Its mask thus depends only on (seed, step, global example index), however the global batch
    is cut into shards. A plain ``fit`` keeps drawing from ``self.rng`` (faster: PCG64 against
    Philox, and no per-batch setup).
    """

    conf_field = "dropout"

    def __init__(self, ratio: float = 0.5, name: str | None = None) -> None:
        super().__init__(name)
        ratio = float(ratio)
        if not 0.0 <= ratio < 1.0:
            raise self.error(f"ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio
        self._mask: np.ndarray | None = None  # the last forward's mask; None in eval mode
        #: ``(step, first global example index)`` of the next training batch, or None (draw
        #: from ``self.rng``).
        self.example_stream: tuple[int, int] | None = None

    def distribute(self, world: Any, step: int) -> None:
        """Before a training batch: per-example streams under a distributed model, else none."""
        self.example_stream = None if world is None else (int(step), int(world.first_example))

    def get_config(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "name": self.name}

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x)
        y = self.buffer("y", x.shape)
        if not self.training:
            self._mask = None
            np.copyto(y, x)
            return y
        if self.rng is None:
            self.rng = np.random.default_rng()
        # float32 draws whatever the layer's dtype: half the bytes, and 2^-24 resolution is
        # far finer than any ratio anyone sets.
        u = self.buffer("uniform", (x.size,), np.float32)
        if self.example_stream is None:
            self.rng.random(out=u, dtype=np.float32)
        else:
            self._draw_examples(u, x.size // max(1, x.shape[0]))
        mask = self.buffer("mask", x.shape)
        kernels.dropout_forward(x.reshape(-1), u, self.ratio, y.reshape(-1), mask.reshape(-1))
        self._mask = mask
        return y

    def _stream_key(self) -> np.ndarray:
        """The Philox key: a hash of the layer generator's state (what the seed fixed)."""
        digest = hashlib.blake2b(repr(self.rng.bit_generator.state).encode(), digest_size=16).digest()
        return np.frombuffer(digest, dtype=np.uint64).copy()

    def _draw_examples(self, u: np.ndarray, units: int) -> None:
        """Fills ``u`` with this batch's draws of the step's stream (see the class docstring)."""
        step, first = self.example_stream
        bits = np.random.Philox(key=self._stream_key(), counter=[0, 0, step, 0])
        # In float32 draws: one uint32 each, 8 per Philox counter (4 uint64 outputs, each split
        # in two); advance() moves whole counters. tests/test_dropout.py checks the layout.
        start = first * units
        bits.advance(start // 8)
        draws = np.random.Generator(bits)
        if start % 8:  # the first example starts inside a counter block: discard its head
            draws.random(start % 8, dtype=np.float32)
        draws.random(out=u, dtype=np.float32)

    def backward(self, dy: np.ndarray, need_input_grad: bool = True) -> np.ndarray | None:
        if not need_input_grad:
            return None
        dx = self.input_grad_buffer(dy.shape)
        if self._mask is not None:
            np.multiply(dy, self._mask, out=dx)
        else:
            np.copyto(dx, dy)
        return dx
