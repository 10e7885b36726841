"""Placeholder while this layer family is being written."""
from .base import Layer


class Dummy(Layer):
    pass


class ImageInput(Layer):
    pass


class LabelInput(Layer):
    pass

