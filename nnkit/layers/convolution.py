"""Placeholder while this layer family is being written."""
from .base import Layer


class Convolution2D(Layer):
    pass

