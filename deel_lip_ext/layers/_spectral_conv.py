"""Shared machinery of the spectral convolutions `PadConv2D`, `SpectralConv2DTranspose`, `SpectralConv1D`.

Every one of them orthonormalizes its reshaped kernel matrix M (RKO: power
iteration + Björck, `normalizers.reshaped_kernel_orthogonalization`), so
||M||_2 <= 1, and multiplies it by k / sqrt(max overlap), where the overlap
of an input entry i is the number of (output window, kernel tap) pairs that
read it, padding copies included:

    ||conv(pad(x))||^2 = sum_o ||M^T patch_o(pad(x))||^2 <= sum_o ||patch_o(pad(x))||^2
                       = sum_i count_i x_i^2 <= (max_i count_i) ||x||^2.

Zero padding ("same", "valid", "constant") reads each entry at most
ceil(k/s) times per axis whatever the input size, a size-independent bound.
Reflect, symmetric and circular padding copy border entries, so their count
depends on the size: the layer pins its spatial size at build and refuses
inputs of another size. (deel-lip's factor for these paddings is the
zero-padding one, which their copies can exceed.)
"""

from __future__ import annotations

import math
import numbers

import keras
import numpy as np
from keras import ops

from deel_lip_ext.layers.base import KernelBiasMixin, ParametrizedLayer, SpectralMixin
from deel_lip_ext.spectrum import MAX_DENSE_OPERATOR_SIZE, linf_kernel_norm, padded_axis_counts

__all__ = ["ZERO_PADDINGS", "pad_widths", "axis_overlap_counts", "max_overlap", "SpectralConvBase"]

ZERO_PADDINGS = ("same", "valid", "constant")

# Above this many input entries the dense operator matrix of `operator_norm` is too big: use the bound.
MAX_IMPULSE_SIZE = MAX_DENSE_OPERATOR_SIZE


def pad_widths(size, kernel, stride, padding):
    """(before, after) pads of one axis: TensorFlow's for "same", none for "valid", (k//2, k-1-k//2) otherwise."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        n_out = -(-size // stride)
        total = max((n_out - 1) * stride + kernel - size, 0)
        return (total // 2, total - total // 2)
    return (kernel // 2, kernel - 1 - kernel // 2)


def axis_overlap_counts(size, kernel, stride, padding):
    """For each input index of one axis: how many (output window, kernel tap) pairs read it, padding copies included.

    Args:
        size: input length.
        kernel: kernel length.
        stride: stride.
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".

    Returns:
        A numpy int array of length `size`.

    Examples:
        >>> axis_overlap_counts(4, 3, 1, "reflect")  # array([2, 4, 4, 2]) (edge copies counted)
    """
    mode = "constant" if padding in ZERO_PADDINGS else padding
    return padded_axis_counts(size, kernel, stride, pad_widths(size, kernel, stride, padding), mode)


def max_overlap(sizes, kernel_size, strides, padding):
    """Max over input entries of the overlap count (product over the axes of the per-axis maxima).

    Zero paddings use ceil(k/s) per axis, a bound valid for every input size;
    the copying paddings need every size (ValueError otherwise).
    """
    worst = 1
    for size, kernel, stride in zip(sizes, kernel_size, strides):
        if padding in ZERO_PADDINGS:
            worst *= math.ceil(kernel / stride)
        elif size is None:
            raise ValueError(f"padding={padding!r} needs known spatial dimensions, got sizes {tuple(sizes)}.")
        else:
            worst *= int(axis_overlap_counts(size, kernel, stride, padding).max())
    return max(worst, 1)


def int_tuple(value, rank, name):
    """`value` (an int or a tuple of `rank` ints >= 1) as a tuple."""
    values = (value,) * rank if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if not (
        isinstance(values, (tuple, list))
        and len(values) == rank
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values)
    ):
        raise ValueError(f"{name} must be an int >= 1 or a tuple of {rank} such ints, got {value!r}.")
    return tuple(int(v) for v in values)


class SpectralConvBase(KernelBiasMixin, SpectralMixin, ParametrizedLayer):
    """RKO kernel times k / sqrt(max overlap); subclasses define the geometry.

    Subclasses implement `build` (ending with `_finish_build`), `linear(inputs,
    kernel)` (the bias-free map), `compute_output_shape`, `plain_layers` and
    `_overlap(input_shape)` (the max overlap count at that input shape).
    """

    def _init_conv(
        self,
        rank,
        filters,
        kernel_size,
        strides,
        padding,
        paddings,
        data_format,
        dilation_rate,
        groups,
        k_coef_lip,
        spectral_args,
        kernel_bias_args,
    ):
        if isinstance(filters, bool) or not isinstance(filters, numbers.Integral) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        if padding not in paddings:
            raise ValueError(f"padding must be one of {paddings}, got {padding!r}.")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"data_format must be 'channels_last' (or None), got {data_format!r}.")
        if int_tuple(dilation_rate, rank, "dilation_rate") != (1,) * rank:
            raise ValueError(
                f"dilation_rate must be 1: dilated Lipschitz convolutions are not supported, got {dilation_rate!r}."
            )
        if groups != 1:
            raise ValueError(f"groups must be 1, got {groups!r}.")
        self._init_lipschitz(k_coef_lip)
        self._init_spectral(*spectral_args)
        self._init_kernel_bias(*kernel_bias_args)
        self.rank = rank
        self.filters = int(filters)
        self.kernel_size = int_tuple(kernel_size, rank, "kernel_size")
        self.strides = int_tuple(strides, rank, "strides")
        self.padding = padding
        self.input_spec = keras.layers.InputSpec(ndim=rank + 2)

    def _finish_build(self, kernel_shape, spatial_size, channels):
        """Create kernel, bias, u and the cache; pin the spatial size when the padding copies entries."""
        self.input_spatial_size = tuple(spatial_size)
        self.kernel_channels_in = channels
        self.lipschitz_coefficient = 1.0 / math.sqrt(self._overlap((None, *spatial_size, channels)))
        self.kernel = self._add_raw_kernel(kernel_shape)
        self._add_bias(self.filters)
        self._build_power_iteration_vector(kernel_shape[-1])
        self.build_kernel_cache(kernel_shape)
        if self.padding in ZERO_PADDINGS:
            self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={-1: channels})
        else:
            self.input_spec = keras.layers.InputSpec(shape=(None, *spatial_size, channels))

    def _check_input_size(self, input_shape):
        if self.padding not in ZERO_PADDINGS and tuple(input_shape[1:-1]) != self.input_spatial_size:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} with padding={self.padding!r} was built for spatial size "
                f"{self.input_spatial_size}: its Lipschitz factor holds at that size only, got {tuple(input_shape)}."
            )

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def compute_kernel(self, training=False):
        return self._spectral_kernel(self.lipschitz_coefficient * self.k_coef_lip)

    def linear(self, inputs, kernel):
        raise NotImplementedError

    def _overlap(self, input_shape):
        raise NotImplementedError

    def call(self, inputs, training=None):
        return self._bias_and_activation(self.linear(inputs, self.kernel_for_call(training)))

    def operator_matrix(self, input_shape: tuple) -> np.ndarray | None:
        """Dense matrix (inputs, outputs) of the bias-free map at `input_shape` from unit impulses.

        Args:
            input_shape: Keras input shape with the batch dimension.

        Returns:
            A float64 array, or None when a dimension is unknown or the input has more than 3072 entries.
        """
        entries = tuple(input_shape[1:])
        if any(dim is None for dim in entries) or int(np.prod(entries)) > MAX_IMPULSE_SIZE:
            return None
        size = int(np.prod(entries))
        impulses = ops.convert_to_tensor(np.eye(size, dtype="float32").reshape((size, *entries)))
        outputs = ops.convert_to_numpy(self.linear(impulses, self.effective_kernel()))
        return outputs.reshape(size, -1).astype(np.float64)

    def operator_norm(self, input_shape):
        """L2 operator norm of the bias-free map at `input_shape` (batch first): exact or a proven upper bound.

        Exact (largest singular value of the map's dense matrix, built from
        unit impulses) when the input has at most 3072 entries; otherwise
        ||M||_2 * sqrt(max overlap), M the reshaped effective kernel.
        """
        self._check_input_size(input_shape)
        matrix = self.operator_matrix(input_shape)
        if matrix is not None:
            return float(np.linalg.norm(matrix, 2))
        kernel = ops.convert_to_numpy(self.effective_kernel()).astype(np.float64)
        return float(np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2) * math.sqrt(self._overlap(input_shape)))

    def linf_operator_norm(self, input_shape: tuple | None = None) -> float:
        """Upper bound of the l_inf operator norm: the largest absolute column sum of the reshaped kernel.

        Each output entry is a sum of kernel entries times input entries
        (padding adds zeros or copies): valid for every padding of a direct
        convolution (transposed convolutions override it).
        """
        return linf_kernel_norm(self.effective_kernel())

    def _conv_config(self):
        return {
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            **self._kernel_bias_config(),
            **self._spectral_config(),
        }

    def get_config(self):
        config = super().get_config()
        config.update(self._conv_config())
        return config
