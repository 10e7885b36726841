"""Placeholder while this layer family is being written."""
from .base import Layer


class MaxPooling2D(Layer):
    pass


class AvgPooling2D(Layer):
    pass

