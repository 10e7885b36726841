"""nnkit layers: one module per family, all re-exported here."""
from .input import Dummy, ImageInput, LabelInput
from .dense import Dense
from .convolution import Convolution2D
from .pooling import MaxPooling2D, AvgPooling2D
from .normalization import LRN2D, BatchNormalization
from .activation import Activation
from .dropout import Dropout
from .preprocessing import Normalization, Rescaling
from .reshape import Flatten, ZeroPadding2D
from .loss import Loss, Accuracy
from .base import Layer, Param, name_layers, set_seed

__all__ = [
    "Dummy",
    "ImageInput",
    "LabelInput",
    "Dense",
    "Convolution2D",
    "MaxPooling2D",
    "AvgPooling2D",
    "LRN2D",
    "BatchNormalization",
    "Activation",
    "Dropout",
    "Rescaling",
    "Normalization",
    "Flatten",
    "ZeroPadding2D",
    "Loss",
    "Accuracy",
    "Layer",
    "Param",
    "name_layers",
    "set_seed",
]
