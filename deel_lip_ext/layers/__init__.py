"""Keras layers that are k-Lipschitz by construction (deel-lip's names)."""

from deel_lip_ext.layers.base import LipschitzLayer, ParametrizedLayer, check_k_coef_lip
from deel_lip_ext.layers.dense import FrobeniusDense, SpectralDense
from deel_lip_ext.layers.convolutional import FrobeniusConv2D, SpectralConv2D
