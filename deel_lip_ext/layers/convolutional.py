"""k-Lipschitz 2-D convolutions: `SpectralConv2D` and `FrobeniusConv2D`.

Both constrain the reshaped kernel matrix W `(kh * kw * c_in, c_out)` to spectral
norm <= 1, then multiply by a correction coefficient that makes the
*convolution operator* k-Lipschitz for the padding the layer really uses:

    ||conv(x)||^2 = sum_o ||W^T patch_o(x)||^2 <= sum_o ||patch_o(x)||^2
                  = sum_i count_i x_i^2 <= (max_i count_i) ||x||^2,

where count_i is the number of output positions whose receptive field covers
input pixel i (with multiplicity under circular wrap). The coefficient is
1 / sqrt(max_i count_i), computed exactly at build time from the input size,
stride and padding ("same" zero padding, "valid" or "circular").

The coefficient depends on the input size, so a layer built for a known
height/width pins it: calling it on another size raises `ValueError` (build
with `None` spatial dimensions for a layer usable at every size: it then
uses ceil(k/s), the worst overlap over all sizes).

deel-lip uses, for "same" zero padding, the *average* overlap; that is not an
upper bound (a 3x3 kernel on a 28x28 input reaches 1.016 > 1), so we do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import normalizers
from deel_lip_ext.layers.base import KernelBiasMixin, ParametrizedLayer, SpectralMixin
from deel_lip_ext.layers.padding import CircularPadding2D, circular_pad, int_pair
from deel_lip_ext.spectrum import circular_pad_widths, conv_sv_range

__all__ = ["SpectralConv2D", "FrobeniusConv2D", "overlap_counts", "conv_lipschitz_coefficient", "PADDINGS"]

PADDINGS = ("same", "valid", "circular")


def overlap_counts(size: int, kernel: ArrayLike, stride: int, padding: str) -> np.ndarray | None:
    """For each input index along one axis, how many output windows cover it.

    Args:
        size: input length (None: unknown).
        kernel: kernel length.
        stride: stride.
        padding: "same" (TensorFlow's zero padding), "valid" or "circular".

    Returns:
        A numpy int array of length `size`, or None when `size` is None.
    """
    if size is None:
        return None
    if padding == "circular":
        before = kernel // 2
        n_out = (size - 1) // stride + 1
        starts = np.arange(n_out) * stride - before
        covered = (starts[:, None] + np.arange(kernel)[None, :]) % size
        return np.bincount(covered.ravel(), minlength=size)
    if padding == "same":
        n_out = -(-size // stride)
        before = max((n_out - 1) * stride + kernel - size, 0) // 2
    else:
        n_out = (size - kernel) // stride + 1
        before = 0
    counts = np.zeros(size, dtype=int)
    for start in np.arange(max(n_out, 0)) * stride - before:
        counts[max(start, 0) : max(start + kernel, 0)] += 1
    return counts


def conv_lipschitz_coefficient(
    input_size: int | tuple[int, int], kernel_size: int | tuple[int, int], strides: int | tuple[int, int], padding: str
):
    """1/sqrt(max overlap): makes a conv with a spectrally normalized reshaped kernel 1-Lipschitz.

    Exact (for this bound) at the given input size; when a spatial size is
    unknown, uses ceil(k/s), the maximum over all sizes for zero/valid padding.
    """
    worst = 1
    for size, kernel, stride in zip(input_size, kernel_size, strides):
        counts = overlap_counts(size, kernel, stride, padding)
        worst *= int(counts.max()) if counts is not None and counts.size else math.ceil(kernel / stride)
    return 1.0 / math.sqrt(max(worst, 1))


class LipschitzConv2DBase(KernelBiasMixin, ParametrizedLayer):
    """Convolution plumbing shared by the Lipschitz 2-D convolutions.

    Holds the raw kernel (kh, kw, c_in, filters) and the bias, applies the
    convolution with the constrained kernel for padding "same", "valid" or
    "circular" (wrap-around pad then "valid"), and exports to stock
    `keras.layers.Conv2D` (preceded by `CircularPadding2D` when circular).
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
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last' (or None), got {data_format!r}.")
        if int_pair(dilation_rate, "dilation_rate") != (1, 1):
            raise ValueError(
                f"dilation_rate must be 1: dilated Lipschitz convolutions are not supported, got {dilation_rate!r}."
            )
        if groups != 1:
            raise ValueError(f"groups must be 1, got {groups!r}.")
        self._init_lipschitz(k_coef_lip)
        self.filters = filters
        self.kernel_size = int_pair(kernel_size, "kernel_size")
        self.strides = int_pair(strides, "strides")
        self.padding = padding
        self._init_kernel_bias(
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        if channels is None:
            raise ValueError(f"{self.__class__.__name__} needs a known channel dimension, got {input_shape}.")
        if self.padding == "circular":
            if height is None or width is None:
                raise ValueError(f"padding='circular' needs known spatial dimensions, got input shape {input_shape}.")
            for size, pads in zip((height, width), circular_pad_widths(self.kernel_size)):
                if max(pads) > size:
                    raise ValueError(
                        f"kernel_size {self.kernel_size} is too large for circular padding of a {height}x{width} input."
                    )
        elif self.padding == "valid":
            for size, k in zip((height, width), self.kernel_size):
                if size is not None and size < k:
                    raise ValueError(
                        f"padding='valid' needs inputs at least kernel_size {self.kernel_size}, got {input_shape}."
                    )
        self.input_spatial_size = (height, width)
        self.lipschitz_coefficient = conv_lipschitz_coefficient(
            (height, width), self.kernel_size, self.strides, self.padding
        )
        kernel_shape = self.kernel_size + (channels, self.filters)
        self._add_kernel_and_bias(kernel_shape, self.filters)
        self.build_parametrization_state()
        self.build_kernel_cache(kernel_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def build_parametrization_state(self):
        """Create the non-trainable state of the parametrization (none by default)."""

    def check_input_size(self, input_shape):
        """Raise `ValueError` if `input_shape` has another known height/width than the one the layer was built for."""
        for size, pinned in zip(tuple(input_shape)[1:3], self.input_spatial_size):
            if pinned is not None and size is not None and int(size) != pinned:
                raise ValueError(
                    f"layer {self.name!r} was built for {self.input_spatial_size[0]}x{self.input_spatial_size[1]} "
                    f"inputs (its Lipschitz coefficient depends on the size), got input shape {tuple(input_shape)}: "
                    "use a new layer for this size, or build with None spatial dimensions to accept every size."
                )

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 operator norm of the bias-free convolution at `input_shape` (default: the build shape).

        Exact (FFT for circular stride 1, dense operator SVD on small inputs),
        otherwise the certified bound of `deel_lip_ext.spectrum.conv_sv_range`.
        """
        shape = self._checked_shape(input_shape)
        kernel = ops.convert_to_numpy(self.effective_kernel())
        return conv_sv_range(kernel, shape[1:3] + (kernel.shape[2],), self.strides, self.padding)[1]

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free convolution (`deel_lip_ext.spectrum.conv_sv_range`)."""
        shape = self._checked_shape(input_shape)
        kernel = ops.convert_to_numpy(self.effective_kernel())
        return conv_sv_range(kernel, shape[1:3] + (kernel.shape[2],), self.strides, self.padding)

    def _checked_shape(self, input_shape):
        shape = (None, *self.input_spatial_size, None) if input_shape is None else tuple(input_shape)
        self.check_input_size(shape)
        return shape

    def call(self, inputs: ArrayLike, training: bool | None = None):
        self.check_input_size(inputs.shape)
        padding = self.padding
        if padding == "circular":
            inputs = circular_pad(inputs, circular_pad_widths(self.kernel_size))
            padding = "valid"
        outputs = ops.conv(inputs, self.kernel_for_call(training), strides=self.strides, padding=padding)
        return self._bias_and_activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        sizes = []
        for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                sizes.append(None)
            elif self.padding == "valid":
                sizes.append((size - k) // s + 1)
            else:
                sizes.append(-(-size // s))
        return (input_shape[0], *sizes, self.filters)

    def plain_layers(self, kernel: ArrayLike):
        layers = []
        in_shape = (None, *self.input_spatial_size, kernel.shape[2])
        padding = self.padding
        if padding == "circular":
            pad = CircularPadding2D(circular_pad_widths(self.kernel_size), name=f"{self.name}_circular_pad")
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

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                **self._kernel_bias_config(),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SpectralConv2D(SpectralMixin, LipschitzConv2DBase):
    """2-D convolution that is k-Lipschitz for its own padding and stride.

    The reshaped kernel `(kh * kw * c_in, filters)` is orthonormalized (RKO:
    power iteration + Björck), then scaled by k / sqrt(max overlap), the exact
    correction for this input size, stride and padding (see the module
    docstring). The layer is k-Lipschitz but not orthogonal; use `BCOPConv2D`
    for gradient-norm preserving convolutions.

    Args:
        filters: number of output channels.
        kernel_size: int or pair.
        strides: int or pair.
        padding: "same" (zero), "valid" or "circular" (wrap-around).
        k_coef_lip: Lipschitz constant of the layer.
        eps_spectral: as in `SpectralDense`.
        eps_bjorck: as in `SpectralDense`.
        beta_bjorck: as in `SpectralDense`.
        maxiter_spectral: as in `SpectralDense`.
        maxiter_bjorck: as in `SpectralDense`.
        **kwargs: other arguments of `keras.layers.Conv2D` (dilation and groups must be 1;
            `activation` counts in the Lipschitz constant as in `SpectralDense`).

    A layer built for a known height and width refuses other sizes (its
    correction depends on the size); build it with None spatial dimensions
    to use it at every size.

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
        k_coef_lip: float = 1.0,
        eps_spectral: float = normalizers.DEFAULT_EPS_SPECTRAL,
        eps_bjorck: float | None = normalizers.DEFAULT_EPS_BJORCK,
        beta_bjorck: float = normalizers.DEFAULT_BETA_BJORCK,
        maxiter_spectral: int = normalizers.DEFAULT_MAXITER_SPECTRAL,
        maxiter_bjorck: int = normalizers.DEFAULT_MAXITER_BJORCK,
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, kernel_size, strides=strides, padding=padding, k_coef_lip=k_coef_lip, **kwargs)
        self._init_spectral(eps_spectral, eps_bjorck, beta_bjorck, maxiter_spectral, maxiter_bjorck)

    def build_parametrization_state(self):
        self._build_power_iteration_vector(self.filters)

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def compute_kernel(self, training: bool | None = False):
        return self._spectral_kernel(self.lipschitz_coefficient * self.k_coef_lip)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._spectral_config())
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FrobeniusConv2D(LipschitzConv2DBase):
    """2-D convolution with a Frobenius-normalized kernel, k-Lipschitz for its padding.

    The kernel is `k * W / ||W||_F / sqrt(max overlap)`. Cheaper than
    `SpectralConv2D` (no iteration); tight when the conv has one output
    channel (the reshaped matrix is then a vector).

    Args:
        filters: as `SpectralConv2D`.
        kernel_size: as `SpectralConv2D`.
        strides: as `SpectralConv2D`.
        padding: as `SpectralConv2D`.
        k_coef_lip: as `SpectralConv2D`.

    Examples:
        >>> conv = FrobeniusConv2D(1, 3, padding="same")
    """

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self, training: bool | None = False):
        kernel = normalizers.frobenius_normalization(ops.cast(self.kernel, "float32"))
        return kernel * (self.lipschitz_coefficient * self.k_coef_lip), []
