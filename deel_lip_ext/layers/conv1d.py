"""`SpectralConv1D`: a k-Lipschitz 1-D convolution (deel-torchlip's `SpectralConv1d`, Keras arguments)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from deel_lip_ext.layers._spectral_conv import SpectralConvBase
from deel_lip_ext.parametrizations import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
)

__all__ = ["SpectralConv1D"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralConv1D(SpectralConvBase):
    """1-D convolution that is k-Lipschitz for its padding and stride, channels-last (N, L, C).

    The reshaped kernel (k c_in, filters) is orthonormalized (RKO, as
    `SpectralConv2D`) and scaled by k_coef_lip / sqrt(ceil(k / s)): each input
    entry is read by at most ceil(k/s) windows with zero padding, whatever the
    length. deel-torchlip's `SpectralConv1d` uses the same factor; its torch
    arguments (in_channels, out_channels, stride, padding_mode) become Keras's
    (filters, strides, padding).

    Args:
        filters: number of output channels.
        kernel_size: int (or a 1-tuple).
        strides: int (or a 1-tuple).
        padding: "same" or "valid" (zero padding).
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1.
        groups: must be 1.
        activation: activation applied after the bias.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        eps_spectral: power-iteration tolerance (0: exactly `maxiter_spectral` steps).
        eps_bjorck: Björck tolerance (0: exactly `maxiter_bjorck` steps, None: no Björck).
        beta_bjorck: Björck step in ]0, 0.5].
        maxiter_spectral: maximal number of power iterations.
        maxiter_bjorck: maximal number of Björck iterations.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> conv = SpectralConv1D(8, 3)
        >>> conv(keras.random.normal((2, 50, 4))).shape
        (2, 50, 8)
    """

    rank = 1
    paddings = ("same", "valid")

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int],
        strides: int | tuple[int] = 1,
        padding: str = "same",
        data_format: str | None = None,
        dilation_rate: int | tuple[int] = 1,
        groups: int = 1,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        eps_spectral: float = DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = DEFAULT_EPS_BJORCK,
        beta_bjorck: float = DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            k_coef_lip=k_coef_lip,
            **kwargs,
        )
        self._init_spectral(eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck)
