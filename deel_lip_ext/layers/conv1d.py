"""`SpectralConv1D`: a k-Lipschitz 1-D convolution (deel-torchlip's `SpectralConv1d`, Keras arguments)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext import normalizers
from deel_lip_ext.layers._spectral_conv import SpectralConvBase, max_overlap

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
        eps_spectral: float = normalizers.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = normalizers.DEFAULT_EPS_BJORCK,
        beta_bjorck: float = normalizers.DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = normalizers.DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = normalizers.DEFAULT_MAXITER_BJORCK,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self._init_conv(
            1,
            filters,
            kernel_size,
            strides,
            padding,
            ("same", "valid"),
            data_format,
            dilation_rate,
            groups,
            k_coef_lip,
            (eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck),
            (
                activation,
                use_bias,
                kernel_initializer,
                bias_initializer,
                kernel_regularizer,
                bias_regularizer,
                kernel_constraint,
                bias_constraint,
            ),
        )

    def build(self, input_shape):
        length, channels = input_shape[1], input_shape[2]
        if channels is None:
            raise ValueError(f"SpectralConv1D needs a known channel dimension, got input shape {input_shape}.")
        if self.padding == "valid" and length is not None and length < self.kernel_size[0]:
            raise ValueError(
                f"padding='valid' needs inputs at least kernel_size {self.kernel_size}, got {input_shape}."
            )
        self._finish_build(self.kernel_size + (channels, self.filters), (length,), channels)

    def _overlap(self, input_shape):
        return max_overlap(input_shape[1:2], self.kernel_size, self.strides, self.padding)

    def linear(self, inputs, kernel):
        return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)

    def compute_output_shape(self, input_shape):
        size, k, s = input_shape[1], self.kernel_size[0], self.strides[0]
        if size is None:
            out = None
        elif self.padding == "valid":
            out = (size - k) // s + 1
        else:
            out = -(-size // s)
        return (input_shape[0], out, self.filters)

    def plain_layers(self, kernel):
        conv = keras.layers.Conv1D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
            dtype=self.dtype_policy,
        )
        conv.build((None, *self.input_spatial_size, kernel.shape[1]))
        conv.set_weights(self._plain_weights(kernel))
        return [conv]
