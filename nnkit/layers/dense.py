"""Placeholder while this layer family is being written."""
from .base import Layer


class Dense(Layer):
    pass

