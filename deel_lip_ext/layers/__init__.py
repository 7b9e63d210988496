"""Keras layers that are k-Lipschitz by construction (deel-lip's names)."""

from deel_lip_ext.layers.base import LipschitzLayer, ParametrizedLayer, check_k_coef_lip
from deel_lip_ext.layers.dense import FrobeniusDense, SpectralDense
from deel_lip_ext.layers.convolutional import FrobeniusConv2D, SpectralConv2D
from deel_lip_ext.layers.activations import CReLU, FullSort, GroupSort, GroupSort2, Householder, MaxMin, MaxMinHalves
from deel_lip_ext.layers.pooling import (
    ScaledAveragePooling2D,
    ScaledGlobalAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling,
    ScaledL2NormPooling2D,
)
from deel_lip_ext.layers.fused import GroupSort2L2NormPooling2D
from deel_lip_ext.layers.sort_fold import ConvGroupSort2Conv2D
from deel_lip_ext.layers.dense_sort_fold import DenseGroupSort2Dense
from deel_lip_ext.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from deel_lip_ext.layers.padding import CircularPadding2D, circular_pad
from deel_lip_ext.layers.bcop import BCOPConv2D, BjorckDense, StackedOrthogonal
from deel_lip_ext.layers.conv_baselines import OSSNConv2D, RKOConv2D, SVCMConv2D
from deel_lip_ext.layers.linf import LInfDistConv2D, LInfDistDense, LogitScale
from deel_lip_ext.layers.padding import Padding2D
from deel_lip_ext.layers.pad_conv import PadConv2D
from deel_lip_ext.layers.transposed import SpectralConv2DTranspose
from deel_lip_ext.layers.conv1d import SpectralConv1D
from deel_lip_ext.layers.residual import ChordDense, LipResidual, LiResNetBlock
from deel_lip_ext.layers.centering import BatchCentering, LayerCentering
from deel_lip_ext.layers.aol import AOLConv2D, AOLDense
from deel_lip_ext.layers.cpl import CPLConv2D, CPLDense
from deel_lip_ext.layers.sll_cpl import SLLConv2D, SLLDense
from deel_lip_ext.layers.aoc import AOCConv2D, AOCConv2DTranspose
