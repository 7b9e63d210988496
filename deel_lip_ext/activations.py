"""Lipschitz activations, importable as `deel_lip_ext.activations` (deel-lip's retro-compatible path).

See `deel_lip_ext.layers.activations` for the definitions and channel conventions.
"""

from deel_lip_ext.layers.activations import CReLU, FullSort, GroupSort, GroupSort2, Householder, MaxMin, MaxMinHalves

__all__ = ["GroupSort", "GroupSort2", "FullSort", "MaxMin", "MaxMinHalves", "CReLU", "Householder"]
