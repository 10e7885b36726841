"""Placeholder while this layer family is being written."""
from .base import Layer


class Activation(Layer):
    pass

