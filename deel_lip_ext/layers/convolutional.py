"""k-Lipschitz 2-D convolutions: `SpectralConv2D` and `FrobeniusConv2D`.

Both constrain the reshaped kernel matrix W `(kh * kw * c_in, c_out)` to spectral
norm <= 1, then multiply by a correction coefficient that makes the
*convolution operator* k-Lipschitz for the padding the layer really uses:

    ||conv(x)||^2 = sum_o ||W^T patch_o(x)||^2 <= sum_o ||patch_o(x)||^2
                  = sum_i count_i x_i^2 <= (max_i count_i) ||x||^2,

where count_i is the number of output positions whose receptive field covers
input pixel i (with multiplicity under circular wrap). The coefficient is
1 / sqrt(max_i count_i), computed exactly at build time from the input size,
stride and padding ("same" zero padding, "valid" or "circular"; see
`deel_lip_ext.parametrizations.overlap`).

The coefficient depends on the input size, so a layer built for a known
height/width pins it: calling it on another size raises `ValueError` (build
with `None` spatial dimensions for a layer usable at every size: it then
uses ceil(k/s), the worst overlap over all sizes).

deel-lip uses, for "same" zero padding, the *average* overlap; that is not an
upper bound (a 3x3 kernel on a 28x28 input reaches 1.016 > 1), so we do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext.layers.base import SpectralMixin
from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.parametrizations import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    frobenius_normalization,
)

__all__ = ["SpectralConv2D", "FrobeniusConv2D", "PADDINGS"]

PADDINGS = ("same", "valid", "circular")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralConv2D(SpectralMixin, LipschitzConv):
    """2-D convolution that is k-Lipschitz for its own padding and stride.

    The reshaped kernel `(kh * kw * c_in, filters)` is orthonormalized (RKO:
    power iteration + Björck), then scaled by k / sqrt(max overlap), the exact
    correction for this input size, stride and padding (see the module
    docstring). The layer is k-Lipschitz but not orthogonal; use `BCOPConv2D`
    or `AOCConv2D` for gradient-norm preserving convolutions.

    A layer built for a known height and width refuses other sizes (its
    correction depends on the size); build it with None spatial dimensions
    to use it at every size.

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: "same" (zero), "valid" or "circular" (wrap-around).
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1.
        groups: must be 1.
        activation: activation applied after the bias; it counts in the
            Lipschitz constant as in `SpectralDense`.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel (orthogonal: Björck starts converged).
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
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = SpectralConv2D(16, 3, padding="circular")
        >>> y = conv(keras.random.normal((2, 28, 28, 1)))
        >>> pad, plain = conv.vanilla_export()  # CircularPadding2D + keras Conv2D
    """

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

    def build_parametrization_state(self):
        self._build_power_iteration_vector(self.filters)

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def compute_kernel(self):
        return self._spectral_kernel(self.lipschitz_coefficient * self.k_coef_lip)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._spectral_config())
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FrobeniusConv2D(LipschitzConv):
    """2-D convolution with a Frobenius-normalized kernel, k-Lipschitz for its padding.

    The kernel is `k * W / ||W||_F / sqrt(max overlap)`. Cheaper than
    `SpectralConv2D` (no iteration); tight when the conv has one output
    channel (the reshaped matrix is then a vector).

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: "same" (zero), "valid" or "circular" (wrap-around).
        data_format: "channels_last" or None (the only layout supported).
        dilation_rate: must be 1.
        groups: must be 1.
        activation: activation applied after the bias (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = FrobeniusConv2D(1, 3, padding="same")
    """

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
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
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

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self):
        kernel = frobenius_normalization(ops.cast(self.kernel, "float32"))
        return kernel * (self.lipschitz_coefficient * self.k_coef_lip), []
