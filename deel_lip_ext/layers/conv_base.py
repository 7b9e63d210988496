"""The one convolution base: every convolution of the library is a `LipschitzConv` and one geometry.

A convolution layer is three things: its parametrization (how the raw
variables become the kernel, `compute_kernel`), a plain convolution op, and
the geometry around that op. `ConvGeometry` says everything about the latter:

* what goes in front of the conv: an `InvertibleDownSampling` (a strided BCOP
  is a downsampling then a stride-1 conv of kernel k/s) and an explicit pad
  (circular, or deel-lip's "constant"/"reflect"/"symmetric"),
* the conv itself: rank (1-D or 2-D), kernel size, strides, "same"/"valid",
  dilation, groups, direct or transposed,
* what comes after: the crop of a circular transposed conv.

`LipschitzConv` implements `build`, `call`, `compute_output_shape` and
`plain_layers` (the export) once, from the geometry its subclass returns in
the single hook `conv_geometry()`; no subclass overrides them. Subclasses say
how their variables become the kernel (`build_raw_weights`,
`build_parametrization_state`, `kernel_dependencies`, `compute_kernel`) and,
when the default does not hold for them, how to bound the operator
(`operator_norm`, `singular_value_range`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._pinned_size import assert_spatial_size, check_spatial_size
from deel_lip_ext._validation import check_channels_last, check_choice, check_int, int_tuple
from deel_lip_ext.layers.base import KernelBiasMixin, ParametrizedLayer
from deel_lip_ext.layers.padding import CircularPadding2D, Padding2D
from deel_lip_ext.layers.resampling import InvertibleDownSampling, pixel_unshuffle
from deel_lip_ext.parametrizations.overlap import conv_lipschitz_coefficient
from deel_lip_ext.parametrizations.padding import circular_pad, mode_pad
from deel_lip_ext.spectrum import circular_pad_widths, conv_sv_range, linf_kernel_norm, linf_transposed_kernel_norm

__all__ = ["ConvGeometry", "LipschitzConv", "transposed_circular_pads"]

# Paddings a conv op applies itself; the others are an explicit pad followed by a "valid" conv.
OP_PADDINGS = ("same", "valid")
# Paddings that copy input entries (their Lipschitz correction depends on the input size).
COPYING_PADDINGS = ("circular", "reflect", "symmetric")


def transposed_circular_pads(kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((before, after) wrap pad of the input, (before, after) crop of the valid transposed conv's output).

    The transposed conv with circular padding is the adjoint of the circular
    conv (wrap pad k//2 before) on the (s n) output torus: pad the input by
    ceil((k - 1 - k//2) / s) before and floor((k//2 - 1) / s) + 1 after, run the
    'valid' transposed conv, keep the s n outputs from k//2 + s * before on.
    The widths are the same at every input size n.

    Args:
        kernel: kernel size k along one spatial axis (an int >= 1).
        stride: stride s along that axis (an int >= 1).

    Returns:
        `((pad_before, pad_after), (crop_before, crop_after))`, ints.
    """
    shift = kernel // 2
    pad_before = -(-(kernel - 1 - shift) // stride)
    pad_after = (shift - 1) // stride + 1
    crop_before = shift + stride * pad_before
    crop_after = stride * pad_after + kernel - stride - shift
    return (pad_before, pad_after), (crop_before, crop_after)


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """How a convolution layer applies its kernel: the ops in front of the conv, the conv, the ops after it.

    Attributes:
        kernel_size: spatial size of the kernel the conv op applies (after a downsampling: k / s).
        strides: strides of the conv op.
        padding: the layer's padding: "same", "valid", "circular", "constant", "reflect" or "symmetric".
        dilation_rate: dilation of the conv op.
        groups: groups of the conv op.
        transposed: a transposed convolution (kernel (kh, kw, filters, c_in)).
        downsampling: pool size of an `InvertibleDownSampling` in front of the conv, or None.
    """

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: str
    dilation_rate: tuple[int, ...] = (1, 1)
    groups: int = 1
    transposed: bool = False
    downsampling: tuple[int, ...] | None = None

    @property
    def rank(self) -> int:
        """Number of spatial axes."""
        return len(self.kernel_size)

    @property
    def dilated_kernel_size(self) -> tuple[int, ...]:
        """Extent of the kernel once dilated."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, self.dilation_rate))

    @property
    def op_padding(self) -> str:
        """The padding argument of the conv op: "same"/"valid", or "valid" after an explicit pad."""
        return self.padding if self.padding in OP_PADDINGS else "valid"

    def pads(self) -> tuple[tuple[int, int], ...] | None:
        """The explicit pad in front of the conv op ((top, bottom), (left, right)), or None."""
        if self.padding in OP_PADDINGS:
            return None
        if self.transposed:
            return tuple(transposed_circular_pads(k, s)[0] for k, s in zip(self.kernel_size, self.strides))
        return circular_pad_widths(self.dilated_kernel_size)

    def crops(self) -> tuple[tuple[int, int], ...] | None:
        """The crop after a circular transposed conv, or None."""
        if not (self.transposed and self.padding == "circular"):
            return None
        return tuple(transposed_circular_pads(k, s)[1] for k, s in zip(self.kernel_size, self.strides))

    def conv_input_shape(self, input_shape: tuple) -> tuple:
        """The shape the conv (after the downsampling, before the pad) reads: (N, H / s, W / s, C s^2)."""
        if self.downsampling is None:
            return tuple(input_shape)
        sizes = tuple(None if n is None else n // s for n, s in zip(input_shape[1:-1], self.downsampling))
        channels = input_shape[-1]
        return (input_shape[0], *sizes, None if channels is None else channels * int(np.prod(self.downsampling)))

    def output_shape(self, input_shape: tuple, filters: int) -> tuple:
        """Output shape of the layer for `input_shape` (batch first)."""
        shape = self.conv_input_shape(input_shape)
        sizes = []
        for size, k, s, pads in zip(
            shape[1:-1], self.dilated_kernel_size, self.strides, self.pads() or self._no_pads()
        ):
            if size is None:
                sizes.append(None)
            elif self.transposed:
                sizes.append((size - 1) * s + k if self.padding == "valid" else size * s)
            elif self.padding == "same":
                sizes.append(-(-size // s))
            else:
                sizes.append((size + sum(pads) - k) // s + 1)
        return (input_shape[0], *sizes, filters)

    def _no_pads(self):
        return ((0, 0),) * self.rank

    def apply(self, inputs: ArrayLike, kernel: ArrayLike) -> Any:
        """The bias-free linear map: downsampling, pad, conv op, crop."""
        x = inputs if self.downsampling is None else pixel_unshuffle(inputs, self.downsampling)
        pads = self.pads()
        if pads is not None and not self.transposed and self.padding != "circular":
            x = mode_pad(x, pads, self.padding)
        elif pads is not None:
            x = circular_pad(x, pads)
        if not self.transposed:
            return ops.conv(x, kernel, strides=self.strides, padding=self.op_padding, dilation_rate=self.dilation_rate)
        outputs = ops.conv_transpose(x, kernel, strides=self.strides, padding=self.op_padding)
        crops = self.crops()
        if crops is None:
            return outputs
        (top, bottom), (left, right) = crops
        return outputs[:, top : outputs.shape[1] - bottom, left : outputs.shape[2] - right, :]

    def check_input(self, input_shape: tuple, layer_name: str) -> None:
        """Refuse input sizes the geometry cannot handle (ValueError naming the layer and the fix)."""
        sizes = tuple(input_shape[1:-1])
        if self.downsampling is not None:
            for size, stride, axis in zip(sizes, self.downsampling, ("height", "width")):
                if size is not None and size % stride:
                    raise ValueError(
                        f"layer {layer_name!r}: strides {self.downsampling} must divide the input {axis}, "
                        f"got input shape {tuple(input_shape)}."
                    )
        conv_sizes = self.conv_input_shape(input_shape)[1:-1]
        if self.padding not in OP_PADDINGS and self.padding != "constant" and None in conv_sizes:
            raise ValueError(
                f"layer {layer_name!r}: padding={self.padding!r} needs known spatial dimensions, "
                f"got input shape {tuple(input_shape)}."
            )
        if self.padding == "valid" and not self.transposed:
            if any(n is not None and n < k for n, k in zip(conv_sizes, self.dilated_kernel_size)):
                raise ValueError(
                    f"layer {layer_name!r}: padding='valid' needs inputs at least kernel_size {self.kernel_size} "
                    f"(dilated: {self.dilated_kernel_size}), got input shape {tuple(input_shape)}."
                )
        self._check_pads_fit(conv_sizes, input_shape, layer_name)

    def _check_pads_fit(self, conv_sizes, input_shape, layer_name):
        pads = self.pads()
        if pads is None or self.padding == "constant":
            return
        limit_offset = 1 if self.padding == "reflect" else 0
        for size, (before, after) in zip(conv_sizes, pads):
            if max(before, after) > size - limit_offset:
                raise ValueError(
                    f"layer {layer_name!r}: kernel_size {self.kernel_size} (dilated: {self.dilated_kernel_size}) is "
                    f"too large for {self.padding} padding of an input of spatial size {tuple(input_shape[1:-1])} "
                    f"(strides {self.strides})."
                )

    def plain_layers(self, name: str, input_shape: tuple, conv_layer: Callable, dtype_policy: Any) -> list:
        """Stock Keras layers computing the geometry: the front layers, `conv_layer` (built here), the crop."""
        layers = []
        shape = (None, *input_shape[1:])
        if self.downsampling is not None:
            layers.append(InvertibleDownSampling(self.downsampling, name=f"{name}_downsampling"))
        pads = self.pads()
        if pads is not None and self.padding == "circular":
            layers.append(CircularPadding2D(pads, name=f"{name}_circular_pad"))
        elif pads is not None:
            layers.append(Padding2D(pads, mode=self.padding, name=f"{name}_{self.padding}_pad"))
        for layer in layers:
            shape = layer.compute_output_shape(shape)
        conv = conv_layer()
        conv.build(shape)
        layers.append(conv)
        if self.crops() is not None:
            layers.append(keras.layers.Cropping2D(self.crops(), name=f"{name}_crop", dtype=dtype_policy))
        return layers

    def stock_conv(self, filters, activation, use_bias, name, dtype_policy) -> keras.layers.Layer:
        """The stock Keras conv layer (unbuilt) of the conv op."""
        if self.transposed:
            return keras.layers.Conv2DTranspose(
                filters,
                self.kernel_size,
                strides=self.strides,
                padding=self.op_padding,
                activation=activation,
                use_bias=use_bias,
                name=name,
                dtype=dtype_policy,
            )
        conv_class = keras.layers.Conv1D if self.rank == 1 else keras.layers.Conv2D
        return conv_class(
            filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.op_padding,
            dilation_rate=self.dilation_rate,
            groups=self.groups,
            activation=activation,
            use_bias=use_bias,
            name=name,
            dtype=dtype_policy,
        )


class LipschitzConv(KernelBiasMixin, ParametrizedLayer):
    """Base of every convolution of the library: build, call, output shape and export from one geometry.

    Subclasses set the class attributes `rank` (spatial axes), `paddings`
    (accepted values of `padding`), `transposed`, `supports_dilation` and
    `supports_groups`, override `conv_geometry()` when the conv op is not
    the plain one of their arguments (e.g. a downsampling in front), and
    implement the parametrization (`compute_kernel`, `kernel_dependencies`,
    optionally `build_raw_weights`, `build_parametrization_state` and
    `check_build_shape`).

    Args:
        filters: number of output channels (None, where the class allows it: as many as the input channels).
        kernel_size: int or tuple of `rank` ints.
        strides: int or tuple of `rank` ints.
        padding: one of the class's `paddings`.
        data_format: "channels_last" or None (Keras's global setting, which must be channels-last).
        dilation_rate: int or tuple; must be 1 unless the class supports dilation.
        groups: number of groups; must be 1 unless the class supports groups.
        activation: activation after the bias (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel (or raw matrices).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant of the layer.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).
    """

    rank = 2
    paddings = ("same", "valid", "circular")
    transposed = False
    supports_dilation = False
    supports_groups = False
    # filters=None means "as many as the input channels" (set at build).
    filters_from_input = False

    def __init__(
        self,
        filters: int | None,
        kernel_size: int | tuple[int, ...],
        strides: int | tuple[int, ...] = 1,
        padding: str = "same",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, ...] = 1,
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
        self.filters = check_int(filters, "filters", allow_none=self.filters_from_input)
        self.padding = check_choice(padding, "padding", self.paddings)
        check_channels_last(data_format)
        self.kernel_size = int_tuple(kernel_size, self.rank, "kernel_size")
        self.strides = int_tuple(strides, self.rank, "strides")
        self.dilation_rate = int_tuple(dilation_rate, self.rank, "dilation_rate")
        if self.dilation_rate != (1,) * self.rank and not self.supports_dilation:
            raise ValueError(
                f"dilation_rate must be 1: dilated {type(self).__name__} is not supported, got {dilation_rate!r}."
            )
        self.groups = check_int(groups, "groups")
        if self.groups != 1 and not self.supports_groups:
            raise ValueError(f"groups must be 1 for {type(self).__name__}, got {groups!r}.")
        self._init_lipschitz(k_coef_lip)
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
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    # --- the geometry hook ----------------------------------------------------------------------------
    def conv_geometry(self) -> ConvGeometry:
        """What goes in front of the conv, the conv op (its kernel size and strides), what comes after.

        The default is the plain convolution of the layer's arguments.
        """
        return ConvGeometry(
            self.kernel_size, self.strides, self.padding, self.dilation_rate, self.groups, self.transposed
        )

    @property
    def conv_kernel_size(self) -> tuple[int, ...]:
        """Spatial size of the kernel the conv op applies (k / s after a downsampling)."""
        return self.conv_geometry().kernel_size

    # --- parametrization hooks -------------------------------------------------------------------------
    def check_build_shape(self, input_shape: tuple) -> None:
        """Refuse input shapes the parametrization cannot handle (none by default)."""

    def build_raw_weights(self, kernel_shape: tuple[int, ...]) -> None:
        """Create the raw variables (default: a raw `kernel` of the kernel's shape)."""
        self.kernel = self._add_raw_kernel(kernel_shape)

    def build_parametrization_state(self) -> None:
        """Create the non-trainable state of the parametrization (none by default)."""

    def overlap_correction(self, input_shape: tuple) -> float:
        """1 / sqrt(max overlap) of the conv op at `input_shape` (the RKO kernels' correction factor)."""
        geometry = self.conv_geometry()
        sizes = geometry.conv_input_shape(input_shape)[1:-1]
        return conv_lipschitz_coefficient(sizes, geometry.kernel_size, geometry.strides, self.padding)

    def pinned_spatial_size(self) -> tuple[int | None, ...]:
        """The spatial size the layer refuses to differ from (None: free); default: the build size."""
        return self.input_spatial_size

    # --- Keras layer API -------------------------------------------------------------------------------
    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = input_shape[-1]
        if channels is None or channels < 1:
            raise ValueError(f"{type(self).__name__} needs a known number of input channels >= 1, got {input_shape}.")
        if self.filters is None:
            self.filters = int(channels)
        self.check_build_shape(tuple(input_shape))
        geometry = self.conv_geometry()
        geometry.check_input(tuple(input_shape), self.name)
        if channels * (int(np.prod(geometry.downsampling)) if geometry.downsampling else 1) % self.groups:
            raise ValueError(f"the input channels ({channels}) must be divisible by groups ({self.groups}).")
        self.input_spatial_size = tuple(input_shape[1:-1])
        self.input_channels = int(channels)
        self.conv_input_shape = geometry.conv_input_shape(tuple(input_shape))[1:]
        self.lipschitz_coefficient = self.overlap_correction(tuple(input_shape))
        kernel_shape = self.kernel_shape()
        self.build_raw_weights(kernel_shape)
        self._add_bias(self.filters)
        self.build_parametrization_state()
        self.build_kernel_cache(kernel_shape)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2, axes={-1: channels})

    def kernel_shape(self) -> tuple[int, ...]:
        """Shape of the kernel the conv op applies (call after the input channels are known)."""
        geometry = self.conv_geometry()
        if geometry.transposed:
            return geometry.kernel_size + (self.filters, self.input_channels)
        return geometry.kernel_size + (self.conv_input_shape[-1] // self.groups, self.filters)

    def call(self, inputs: ArrayLike, training: bool | None = None) -> Any:
        inputs = assert_spatial_size(inputs, self.pinned_spatial_size(), self._size_message(inputs.shape))
        outputs = self.conv_geometry().apply(inputs, self.kernel_for_call(training))
        return self._bias_and_activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple:
        return self.conv_geometry().output_shape(tuple(input_shape), self.filters)

    def plain_layers(self, kernel: ArrayLike) -> list:
        geometry = self.conv_geometry()

        def conv_layer():
            return geometry.stock_conv(self.filters, self.activation, self.use_bias, self.name, self.dtype_policy)

        layers = geometry.plain_layers(
            self.name, (None, *self.input_spatial_size, self.input_channels), conv_layer, self.dtype_policy
        )
        conv = next(layer for layer in layers if layer.name == self.name)
        conv.set_weights(self._plain_weights(kernel))
        return layers

    # --- input size and bounds -----------------------------------------------------------------------
    def check_input_size(self, input_shape: tuple) -> None:
        """Raise `ValueError` if `input_shape` has another known spatial size than the pinned one.

        `call` checks the same at run time on TensorFlow when the traced size is unknown
        (`deel_lip_ext._pinned_size`).
        """
        check_spatial_size(input_shape, self.pinned_spatial_size(), self._size_message(input_shape))

    def _size_message(self, input_shape):
        built = "x".join(str(n) for n in self.input_spatial_size)
        return (
            f"layer {self.name!r} was built for spatial size {built} (its Lipschitz constant depends on the "
            f"size), got input shape {tuple(input_shape)}: use a new layer for this size, or build with None "
            "spatial dimensions to accept every size."
        )

    def _checked_shape(self, input_shape: tuple | None) -> tuple:
        shape = (None, *self.input_spatial_size, self.input_channels) if input_shape is None else tuple(input_shape)
        self.check_input_size(shape)
        return shape

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free conv op at `input_shape` (`spectrum.conv_sv_range`).

        Computed on the conv after the downsampling (a permutation, which
        changes no singular value): FFT for circular stride 1, the dense
        operator on small inputs, otherwise min 0 and a certified max.
        """
        geometry = self.conv_geometry()
        shape = geometry.conv_input_shape(self._checked_shape(input_shape))
        kernel = ops.convert_to_numpy(self.effective_kernel())
        return conv_sv_range(kernel, shape[1:-1] + (kernel.shape[2],), geometry.strides, self.padding)

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 operator norm of the bias-free convolution at `input_shape` (the max of `singular_value_range`)."""
        return self.singular_value_range(input_shape)[1]

    def lipschitz_sv(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free convolution at `input_shape`: `singular_value_range`."""
        return self.singular_value_range(input_shape)

    def linf_operator_norm(self, input_shape: tuple | None = None) -> float:
        """Upper bound of the l_inf operator norm, from the effective kernel.

        A direct convolution (any stride, padding, dilation, group, after a
        permutation such as the downsampling): the largest absolute column
        sum of the reshaped kernel. A transposed convolution: the largest sum
        over one residue class of taps (`spectrum.linf_transposed_kernel_norm`).
        """
        kernel = self.effective_kernel()
        if self.conv_geometry().transposed:
            return linf_transposed_kernel_norm(kernel, self.strides)
        return linf_kernel_norm(kernel)

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
