"""`SpectralConv2DTranspose`: a k-Lipschitz transposed 2-D convolution (deel-lip's name and arguments).

A transposed convolution T is the adjoint of the strided convolution C that
maps its (s H, s W, filters) output space back to its (H, W, c_in) input
space, with the same kernel (kh, kw, filters, c_in), so ||T|| = ||C||. C
reads each of its input entries at most ceil(k/s) times per axis, and its
patch matrix is M = reshape(kernel, (kh kw filters, c_in)): orthonormalizing
M (RKO) and scaling by k / sqrt(ceil(kh/sh) ceil(kw/sw)) makes T k-Lipschitz
at every input size.

deel-lip orthonormalizes the other reshape, (kh kw c_in, filters), whose
norm is not the one in the bound above (for 1x1 kernels the two reshapes
are transposes of each other and agree); see the migration guide.
"""

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

__all__ = ["SpectralConv2DTranspose"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralConv2DTranspose(SpectralConvBase):
    """Transposed 2-D convolution that is k-Lipschitz, "same" zero padding (deel-lip).

    The output has spatial size (s H, s W). The raw kernel has Keras's
    `Conv2DTranspose` layout (kh, kw, filters, c_in); see the module docstring
    for the normalization, which is size-independent.

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: must be "same" (deel-lip).
        output_padding: must be None (deel-lip).
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1 (deel-lip).
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
        >>> up = SpectralConv2DTranspose(8, 3, strides=2)
        >>> up(keras.random.normal((2, 7, 7, 16))).shape
        (2, 14, 14, 8)
    """

    paddings = ("same",)
    transposed = True

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "same",
        output_padding: None = None,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
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
        if output_padding is not None:
            raise ValueError(f"output_padding must be None (as in deel-lip), got {output_padding!r}.")
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
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

    def get_config(self) -> dict:
        config = super().get_config()
        config["output_padding"] = None
        return config
