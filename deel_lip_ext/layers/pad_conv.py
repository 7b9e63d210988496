"""`PadConv2D`: a k-Lipschitz 2-D convolution with zero, reflect, symmetric or circular padding.

deel-lip's `PadConv2D` (in `deel.lip.layers.unconstrained`) is a plain,
*unconstrained* Conv2D with these padding modes. Here it is a Lipschitz layer
(the library's promise is that every layer it exports is k-Lipschitz): the
reshaped kernel is orthonormalized (RKO) and scaled by k / sqrt(max overlap),
where the overlap counts the copies that reflect, symmetric and circular
padding make of the border pixels (see `deel_lip_ext.parametrizations.overlap`).
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

__all__ = ["PadConv2D", "PAD_CONV_PADDINGS"]

PAD_CONV_PADDINGS = ("same", "valid", "constant", "reflect", "symmetric", "circular")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class PadConv2D(SpectralConvBase):
    """2-D convolution with deel-lip's `PadConv2D` padding modes, k-Lipschitz for its padding.

    "same" and "valid" are Keras's zero paddings; "constant" (zeros),
    "reflect", "symmetric" and "circular" pad (k//2, k-1-k//2) pixels on each
    axis (k//2 on both sides for odd kernels, as deel-lip) and run a "valid"
    convolution, so a stride-1 output has the input's size. The kernel is
    orthonormalized (RKO, as `SpectralConv2D`) and scaled by k / sqrt(max
    overlap); the padding copies of reflect/symmetric/circular are counted, so
    those modes pin the spatial size given at build. Unlike deel-lip's
    (unconstrained) `PadConv2D`, the layer is k-Lipschitz.

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: one of "same", "valid", "constant", "reflect", "symmetric",
            "circular", in any case ("REFLECT" is "reflect", as in deel-lip).
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1.
        groups: must be 1.
        activation: activation applied after the bias.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel (deel-lip: "glorot_uniform").
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
        >>> conv = PadConv2D(8, 3, padding="reflect")
        >>> y = conv(keras.random.normal((2, 16, 16, 3)))
        >>> pad, plain = conv.vanilla_export()  # Padding2D + keras Conv2D
    """

    paddings = PAD_CONV_PADDINGS

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "same",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation: str | Callable | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
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
            padding=padding.lower() if isinstance(padding, str) else padding,
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
