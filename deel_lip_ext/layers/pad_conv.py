"""`PadConv2D`: a k-Lipschitz 2-D convolution with zero, reflect, symmetric or circular padding.

deel-lip's `PadConv2D` (in `deel.lip.layers.unconstrained`) is a plain,
*unconstrained* Conv2D with these padding modes. Here it is a Lipschitz layer
(the library's promise is that every layer it exports is k-Lipschitz): the
reshaped kernel is orthonormalized (RKO) and scaled by k / sqrt(max overlap),
where the overlap counts the copies that reflect, symmetric and circular
padding make of the border pixels (see `deel_lip_ext.layers._spectral_conv`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext import normalizers
from deel_lip_ext.layers._spectral_conv import (
    ZERO_PADDINGS,
    SpectralConvBase,
    max_overlap,
    pad_widths,
)
from deel_lip_ext.layers.padding import (
    CircularPadding2D,
    Padding2D,
    circular_pad,
    mode_pad,
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
        padding: one of "same", "valid", "constant", "reflect", "symmetric", "circular".
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
        eps_spectral: float = normalizers.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = normalizers.DEFAULT_EPS_BJORCK,
        beta_bjorck: float = normalizers.DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = normalizers.DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = normalizers.DEFAULT_MAXITER_BJORCK,
        **kwargs: Any,
    ) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self._init_conv(
            2,
            filters,
            kernel_size,
            strides,
            padding,
            PAD_CONV_PADDINGS,
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

    def _explicit_pads(self, spatial_size):
        """((top, bottom), (left, right)) of the explicit padding (modes other than same/valid)."""
        geometry = zip(spatial_size, self.kernel_size, self.strides)
        return tuple(pad_widths(size, k, s, self.padding) for size, k, s in geometry)

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        if channels is None:
            raise ValueError(f"PadConv2D needs a known channel dimension, got input shape {input_shape}.")
        if self.padding not in ZERO_PADDINGS:
            if height is None or width is None:
                raise ValueError(
                    f"padding={self.padding!r} needs known spatial dimensions, got input shape {input_shape}."
                )
            limit_offset = 1 if self.padding == "reflect" else 0
            for size, (before, after) in zip((height, width), self._explicit_pads((height, width))):
                if max(before, after) > size - limit_offset:
                    raise ValueError(
                        f"kernel_size {self.kernel_size} is too large for {self.padding} padding of a "
                        f"{height}x{width} input."
                    )
        if self.padding == "valid":
            for size, k in zip((height, width), self.kernel_size):
                if size is not None and size < k:
                    raise ValueError(
                        f"padding='valid' needs inputs at least kernel_size {self.kernel_size}, got {input_shape}."
                    )
        self._finish_build(self.kernel_size + (channels, self.filters), (height, width), channels)

    def _overlap(self, input_shape):
        return max_overlap(input_shape[1:3], self.kernel_size, self.strides, self.padding)

    def linear(self, inputs, kernel):
        if self.padding in ("same", "valid"):
            return ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)
        pads = self._explicit_pads(inputs.shape[1:3])
        padded = circular_pad(inputs, pads) if self.padding == "circular" else mode_pad(inputs, pads, self.padding)
        return ops.conv(padded, kernel, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        sizes = []
        for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                sizes.append(None)
            else:
                before, after = pad_widths(size, k, s, self.padding)
                sizes.append((size + before + after - k) // s + 1)
        return (input_shape[0], *sizes, self.filters)

    def plain_layers(self, kernel):
        layers = []
        in_shape = (None, *self.input_spatial_size, kernel.shape[2])
        padding = self.padding
        if padding not in ("same", "valid"):
            pads = self._explicit_pads(self.input_spatial_size)
            if padding == "circular":
                pad = CircularPadding2D(pads, name=f"{self.name}_circular_pad")
            else:
                pad = Padding2D(pads, mode=padding, name=f"{self.name}_{padding}_pad")
            layers.append(pad)
            in_shape = pad.compute_output_shape(in_shape)
            padding = "valid"
        conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=padding,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
            dtype=self.dtype_policy,
        )
        conv.build(in_shape)
        conv.set_weights(self._plain_weights(kernel))
        layers.append(conv)
        return layers
