"""AOC orthogonal convolutions (Boissin et al., 2025): BCOP composed with a strided RKO, by kernel convolution.

A k x k convolution with stride s (k >= s) is built as the composition of

1. a stride-1 BCOP convolution c_in -> c_in of kernel k - s + 1 (square, so
   exactly orthogonal under circular padding, `deel_lip_ext.layers.bcop`), and
2. a stride-s convolution c_in -> c_out of kernel s x s whose reshaped
   kernel (s * s * c_in, c_out) is Björck-orthonormalized (RKO): it reads
   each pixel once, so it is a permutation (`InvertibleDownSampling`)
   followed by an orthogonal 1 x 1 map,

merged into one kernel K[t] = sum_{p + q = t} B[p] R[q] of size k
(`deel_lip_ext.normalizers.compose_conv_kernels`). The layer runs ONE plain
strided convolution with K; its cost at inference is exactly a `Conv2D`'s,
and the kernel construction depends on k, s and the channels only.

Orthogonality with circular padding (input size divisible by s): the
operator P (outputs x inputs) satisfies P P^T = k^2 I (row-orthogonal,
a co-isometry) when c_out <= s^2 c_in, and P^T P = k^2 I (column-orthogonal,
an isometry) when c_out >= s^2 c_in, with k = `k_coef_lip`: every one of its
min(#inputs, #outputs) singular values is k. Zero padding ("same", "valid")
restricts the circular operator on a larger torus (a sub-matrix), so the
layer is still k-Lipschitz there, not orthogonal.

`AOCConv2DTranspose` is the adjoint of such a convolution (filters -> c_in
on the (s H, s W) output space): an isometry when c_in <= s^2 filters, a
co-isometry otherwise, for its own padding: "same"/"valid" (Keras'
`Conv2DTranspose`) or "circular" (wrap pad, valid transposed conv, crop). The
transposed layer is orthogonal because it is the exact adjoint of an
orthogonal convolution, whatever c_in, c_out and k > s (orthogonium PRs
#1/#2 fixed failures of exactly these cases).

Dilation (stride-1 `AOCConv2D` only): the stride-1 kernel's symbol is unitary
at every frequency (a product of unitary BCOP factors and an orthogonal
1 x 1 map), so the dilated circular convolution, whose symbol samples it at
other frequencies, is orthogonal at every input size. Groups (`AOCConv2D`
only): one AOC kernel per group, a block-diagonal operator.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.bcop import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    StackedOrthogonal,
    bcop_kernel,
    orthonormalize_stack,
)
from deel_lip_ext.layers.convolutional import LipschitzConv2DBase
from deel_lip_ext.layers.padding import CircularPadding2D, circular_pad, int_pair
from deel_lip_ext.normalizers import compose_conv_kernels, rko_strided_kernel
from deel_lip_ext.spectrum import MAX_DENSE_OPERATOR_SIZE, circular_pad_widths, conv_singular_values, conv_sv_range

__all__ = ["AOCConv2D", "AOCConv2DTranspose", "strided_conv_norm"]


def _polyphase_kernel(kernel: np.ndarray, strides: tuple[int, int]) -> np.ndarray:
    """Stride-1 kernel (ceil(kh/sh), ceil(kw/sw), sh * sw * c_in, c_out) of a stride-s conv after a downsampling.

    A circular stride-s convolution on an (s n_h, s n_w) torus equals, up to
    permutations of its input, the circular stride-1 convolution of this
    kernel on the (n_h, n_w) torus: same singular values.
    """
    (kh, kw, c_in, c_out), (sh, sw) = kernel.shape, strides
    nh, nw = -(-kh // sh), -(-kw // sw)
    padded = np.zeros((nh * sh, nw * sw, c_in, c_out))
    padded[:kh, :kw] = kernel
    return padded.reshape(nh, sh, nw, sw, c_in, c_out).transpose(0, 2, 1, 3, 4, 5).reshape(nh, nw, -1, c_out)


def strided_conv_norm(
    kernel: ArrayLike, input_size: tuple[int | None, int | None], strides: tuple[int, int], padding: str
) -> float:
    """L2 norm of the bias-free conv `ops.conv(x, kernel, strides, padding)` (circular: wrap pad, then valid).

    Exact for circular padding (FFT of the polyphase kernel at the
    downsampled size; the size must be divisible by the stride) and for zero
    padding on inputs of at most `MAX_DENSE_OPERATOR_SIZE` values (SVD of the
    dense operator). Larger zero-padded inputs: the norm of the circular conv
    on a torus that contains the padded input without wrap-around (a
    sub-matrix, hence a certified upper bound); unknown sizes: the
    size-independent bound of `deel_lip_ext.spectrum.conv_sv_range`.

    Args:
        kernel: (kh, kw, c_in, c_out).
        input_size: (H, W); None for an unknown size.
        strides: (sh, sw).
        padding: "circular", "same" or "valid".

    Returns:
        The norm (or its upper bound) as a float.

    Examples:
        >>> strided_conv_norm(layer.effective_kernel(), (16, 16), (2, 2), "circular")
    """
    kernel = np.asarray(ops.convert_to_numpy(kernel), dtype=np.float64)
    sizes = tuple(input_size)
    if padding == "circular":
        if None in sizes or any(n % s for n, s in zip(sizes, strides)):
            raise ValueError(f"a circular strided conv needs a size divisible by strides {strides}, got {sizes}.")
        torus = (sizes[0] // strides[0], sizes[1] // strides[1])
        return float(conv_singular_values(_polyphase_kernel(kernel, strides), torus).max())
    if None in sizes or np.prod(sizes) * kernel.shape[2] <= MAX_DENSE_OPERATOR_SIZE:
        return conv_sv_range(kernel, sizes + (kernel.shape[2],), strides, padding)[1]
    torus = tuple(-(-(n + k) // s) for n, k, s in zip(sizes, kernel.shape[:2], strides))
    return float(conv_singular_values(_polyphase_kernel(kernel, strides), torus).max())


def _transposed_circular_pads(size: int, kernel: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((before, after) wrap pad of the input, (before, after) crop of the valid transposed conv's output).

    The transposed conv with circular padding is the adjoint of the circular
    conv (wrap pad k//2 before) on the (s n) output torus: pad the input by
    ceil((k - 1 - k//2) / s) before and floor((k//2 - 1) / s) + 1 after, run the
    'valid' transposed conv, keep the s n outputs from k//2 + s * before on.
    """
    shift = kernel // 2
    pad_before = -(-(kernel - 1 - shift) // stride)
    pad_after = (shift - 1) // stride + 1
    crop_before = shift + stride * pad_before
    crop_after = stride * pad_after + kernel - stride - shift
    return (pad_before, pad_after), (crop_before, crop_after)


class _AOCKernelMixin:
    """The AOC parametrization: a square BCOP kernel composed with a strided RKO kernel.

    `aoc_in` / `aoc_out` are the channels of the convolution the kernel
    defines (for the transposed layer: filters -> c_in).
    """

    def _init_aoc(self, bjorck_iterations, power_iterations):
        for name, value in (("bjorck_iterations", bjorck_iterations), ("power_iterations", power_iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        self.bjorck_iterations = bjorck_iterations
        self.power_iterations = power_iterations
        for kernel, stride in zip(self.kernel_size, self.strides):
            if kernel < stride:
                raise ValueError(
                    f"kernel_size {self.kernel_size} must be >= strides {self.strides}: a stride larger than the "
                    "kernel skips input pixels, which no orthogonal convolution does."
                )
        self.bcop_kernel_size = tuple(k - s + 1 for k, s in zip(self.kernel_size, self.strides))

    def _build_aoc_weights(self, aoc_in, aoc_out, groups):
        """Raw matrices of `groups` independent AOC kernels (aoc_in / groups -> aoc_out / groups each)."""
        self.aoc_in, self.aoc_out = aoc_in // groups, aoc_out // groups
        kh, kw = self.bcop_kernel_size
        count = groups * (kh + kw - 1)
        self.bcop_matrices = self._add_raw_kernel((count, self.aoc_in, self.aoc_in), name="bcop_matrices")
        rows = self.strides[0] * self.strides[1] * self.aoc_in
        self.rko_matrix = self._add_raw_kernel((groups, rows, self.aoc_out), name="rko_matrix")
        self.bcop_vectors, self.rko_vectors = (
            self.add_weight(
                name=name,
                shape=shape,
                initializer=keras.initializers.RandomNormal(0.0, 1.0),
                trainable=False,
                dtype="float32",
                autocast=False,
            )
            for name, shape in (("bcop_vectors", (count, self.aoc_in)), ("rko_vectors", (groups, self.aoc_out)))
        )

    def kernel_dependencies(self):
        return [self.bcop_matrices, self.rko_matrix, self.bcop_vectors, self.rko_vectors]

    def _orthonormal(self):
        squares, bcop_vectors = orthonormalize_stack(
            self.bcop_matrices, self.bcop_vectors, self.bjorck_iterations, self.power_iterations
        )
        matrices, rko_vectors = orthonormalize_stack(
            self.rko_matrix, self.rko_vectors, self.bjorck_iterations, self.power_iterations
        )
        return squares, matrices, [(self.bcop_vectors, bcop_vectors), (self.rko_vectors, rko_vectors)]

    def compute_kernel(self, training: bool | None = False):
        squares, matrices, updates = self._orthonormal()
        per_group = squares.shape[0] // self.groups
        kernels = []
        for group in range(self.groups):
            stack = squares[group * per_group : (group + 1) * per_group]
            first = bcop_kernel(stack, self.bcop_kernel_size, self.aoc_in, self.aoc_in)
            second = rko_strided_kernel(matrices[group], self.strides, self.aoc_in)
            kernels.append(compose_conv_kernels(first, second))
        # Grouped convolutions read the output channels of group j as the j-th contiguous block.
        kernel = kernels[0] if self.groups == 1 else ops.concatenate(kernels, axis=-1)
        return kernel * self.k_coef_lip, updates

    def condense(self):
        """Replace the raw matrices by their orthonormalized values (the layer's function is unchanged)."""
        squares, matrices, _ = self._orthonormal()
        self.bcop_matrices.assign(squares)
        self.rko_matrix.assign(matrices)

    def _check_spatial(self, input_shape, divisible):
        """Refuse input sizes the padding cannot handle (circular: known sizes, divisible by the strides if asked)."""
        sizes = tuple(input_shape[1:3])
        if self.padding == "circular":
            if None in sizes:
                raise ValueError(f"padding='circular' needs known spatial dimensions, got input shape {input_shape}.")
            if divisible and any(size % stride for size, stride in zip(sizes, self.strides)):
                raise ValueError(
                    f"padding='circular' with strides {self.strides} needs sizes divisible by the strides (the "
                    f"operator is orthogonal on such tori only), got input shape {input_shape}."
                )

    def lipschitz_sv(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free map at `input_shape` (default: the build shape).

        Circular padding: exact, from the FFT of each group's polyphase kernel
        (`min` over the min(#inputs, #outputs) singular values). Zero padding:
        `(0.0, operator_norm)`, a range (the max exact or a certified bound).
        """
        norm = self.operator_norm(input_shape)
        if self.padding != "circular":
            return 0.0, norm
        shape = self._checked_shape(input_shape)
        kernel = np.asarray(ops.convert_to_numpy(self.effective_kernel()), dtype=np.float64)
        if self._transposed:
            sizes = self.compute_output_shape(shape)[1:3]
        else:
            sizes, kernel = shape[1:3], _dilated(kernel, self.dilation_rate)
        torus = tuple(n // s for n, s in zip(sizes, self.strides))
        width, low = kernel.shape[-1] // self.groups, np.inf
        for j in range(self.groups):
            poly = _polyphase_kernel(kernel[..., j * width : (j + 1) * width], self.strides)
            values = conv_singular_values(poly, torus)
            full = values.size >= torus[0] * torus[1] * min(poly.shape[2:])
            low = min(low, float(values.min()) if full else 0.0)
        return low, norm

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values at `input_shape`: `lipschitz_sv` (transposition, dilation, groups included)."""
        return self.lipschitz_sv(input_shape)

    def _aoc_config(self):
        return {"bjorck_iterations": self.bjorck_iterations, "power_iterations": self.power_iterations}


def _refuse_unsupported(dilation_rate, groups, strides, transposed):
    """The dilation as a pair; refuse what the AOC layers do not implement."""
    dilation = int_pair(dilation_rate, "dilation_rate")
    if dilation != (1, 1) and (transposed or int_pair(strides, "strides") != (1, 1)):
        raise ValueError(
            f"dilation_rate must be 1 for {'AOCConv2DTranspose' if transposed else 'a strided AOCConv2D'}, got "
            f"{dilation_rate!r}: dilation is implemented for stride-1 AOCConv2D only (Keras has no strided dilated "
            "convolution either)."
        )
    if transposed and groups != 1:
        raise ValueError(
            f"groups must be 1 for AOCConv2DTranspose (Keras has no grouped transposed conv), got {groups!r}."
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}.")
    return dilation


def _dilated(kernel: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    """The kernel with d - 1 zero taps between taps: a dilated conv is the plain conv with it."""
    kh, kw = kernel.shape[:2]
    expanded = np.zeros(((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1) + kernel.shape[2:])
    expanded[:: dilation[0], :: dilation[1]] = kernel
    return expanded


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AOCConv2D(_AOCKernelMixin, LipschitzConv2DBase):
    """Orthogonal strided 2-D convolution in the AOC style: BCOP composed with a strided RKO.

    The layer is ONE plain convolution (kernel k, stride s) whose kernel is the
    composition of a square stride-1 BCOP kernel of size k - s + 1 and an
    s x s stride-s kernel with orthonormalized reshaped matrix (see the
    module docstring). With `padding="circular"` and input sizes divisible
    by s, its operator P is orthogonal: row-orthogonal (P P^T = k^2 I, a
    co-isometry) when `filters` <= s^2 c_in, column-orthogonal (P^T P = k^2 I,
    an isometry) when `filters` >= s^2 c_in, k = `k_coef_lip`. With "same" or
    "valid" zero padding it is k-Lipschitz (not orthogonal). `operator_norm`
    is exact (FFT of the polyphase kernel for circular padding) or a
    certified upper bound. `vanilla_export()` gives [CircularPadding2D (if
    circular), Conv2D] with the composed kernel, the real stride, dilation and groups.

    Args:
        filters: number of output channels.
        kernel_size: int or pair, >= `strides`.
        strides: int or pair.
        padding: "circular" (orthogonal), "same" or "valid" (k-Lipschitz).
        data_format: "channels_last" or None.
        dilation_rate: int or pair; with strides 1 only (refused otherwise). The stride-1 kernel's symbol is
            unitary at every frequency, so the dilated circular convolution is orthogonal at every input size.
        groups: number of channel groups (input channels and `filters` divisible by it): one independent AOC
            kernel per group, block diagonal, so orthogonal as a whole when each group is.
        activation: activation after the bias; must be 1-Lipschitz for the layer to stay k-Lipschitz.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw matrices (`StackedOrthogonal` by default, so that
            Björck starts converged).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw matrices.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw matrices.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant (every singular value under circular padding).
        bjorck_iterations: fixed Björck iterations of both orthonormalizations (20).
        power_iterations: power iterations of the Björck pre-scaling (10).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> conv = AOCConv2D(64, 3, strides=2)  # 3 x 3 kernel, stride 2, orthogonal
        >>> y = conv(keras.random.normal((8, 32, 32, 16)))  # (8, 16, 16, 64)
        >>> pad, plain = conv.vanilla_export()  # CircularPadding2D, Conv2D(strides=2)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation: str | Any | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        **kwargs: Any,
    ) -> None:
        dilation = _refuse_unsupported(dilation_rate, groups, strides, transposed=False)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer or StackedOrthogonal(),
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            k_coef_lip=k_coef_lip,
            **kwargs,
        )
        self._init_aoc(bjorck_iterations, power_iterations)
        if filters % groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups}).")
        self.groups = groups
        self._transposed = False
        self.dilation_rate = dilation
        self.dilated_size = tuple((k - 1) * d + 1 for k, d in zip(self.kernel_size, dilation))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width, channels = input_shape[1:]
        if channels is None or channels < 1:
            raise ValueError(f"AOCConv2D needs a known number of input channels >= 1, got {input_shape}.")
        self._check_spatial(input_shape, divisible=True)
        if self.padding == "circular":
            for size, pads in zip((height, width), circular_pad_widths(self.dilated_size)):
                if max(pads) > size:
                    raise ValueError(
                        f"kernel_size {self.kernel_size} (dilation {self.dilation_rate}) is too large for circular "
                        f"padding of a {height}x{width} input."
                    )
        elif self.padding == "valid" and any(
            n is not None and n < k for n, k in zip((height, width), self.dilated_size)
        ):
            raise ValueError(
                f"padding='valid' needs inputs at least kernel_size {self.kernel_size} (dilated: {self.dilated_size}), "
                f"got {input_shape}."
            )
        self.input_spatial_size = (height, width)
        if channels % self.groups:
            raise ValueError(f"the input channels ({channels}) must be divisible by groups ({self.groups}).")
        self._build_aoc_weights(channels, self.filters, self.groups)
        self._add_bias(self.filters)
        self.build_kernel_cache(self.kernel_size + (channels // self.groups, self.filters))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs: ArrayLike, training: bool | None = None):
        self.check_input_size(inputs.shape)
        padding = self.padding
        if padding == "circular":
            inputs = circular_pad(inputs, circular_pad_widths(self.dilated_size))
            padding = "valid"
        kernel = self.kernel_for_call(training)
        outputs = ops.conv(inputs, kernel, strides=self.strides, padding=padding, dilation_rate=self.dilation_rate)
        return self._bias_and_activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        sizes = []
        for size, k, s in zip(input_shape[1:3], self.dilated_size, self.strides):
            if size is None:
                sizes.append(None)
            elif self.padding == "valid":
                sizes.append((size - k) // s + 1)
            else:
                sizes.append(-(-size // s))
        return (input_shape[0], *sizes, self.filters)

    def plain_layers(self, kernel: ArrayLike):
        layers = []
        in_shape = (None, *self.input_spatial_size, kernel.shape[2] * self.groups)
        padding = self.padding
        if padding == "circular":
            pad = CircularPadding2D(circular_pad_widths(self.dilated_size), name=f"{self.name}_circular_pad")
            layers.append(pad)
            in_shape = pad.compute_output_shape(in_shape)
            padding = "valid"
        conv = keras.layers.Conv2D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            groups=self.groups,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
            dtype=self.dtype_policy,
        )
        conv.build(in_shape)
        conv.set_weights(self._plain_weights(kernel))
        return layers + [conv]

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 norm of the bias-free (strided or dilated) convolution at `input_shape` (see `strided_conv_norm`)."""
        shape = self._checked_shape(input_shape)
        kernel = _dilated(np.asarray(ops.convert_to_numpy(self.effective_kernel())), self.dilation_rate)
        # A grouped conv is block diagonal (group j: input block j -> output block j): the max over groups.
        width = self.filters // self.groups
        return max(
            strided_conv_norm(kernel[..., j * width : (j + 1) * width], shape[1:3], self.strides, self.padding)
            for j in range(self.groups)
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"dilation_rate": self.dilation_rate, "groups": self.groups, **self._aoc_config()})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AOCConv2DTranspose(_AOCKernelMixin, LipschitzConv2DBase):
    """Orthogonal transposed 2-D convolution: the adjoint of an `AOCConv2D`-style convolution.

    The kernel (kh, kw, filters, c_in), Keras' `Conv2DTranspose` layout, is
    the AOC kernel of a stride-s convolution C: filters -> c_in on the
    (s H, s W) output space, and the layer applies T = C^T with its own
    padding: "same" (output (s H, s W)), "valid" (output ((H - 1) s + k, ...))
    or "circular" (output (s H, s W); C circular). Since ||T|| = ||C|| and T
    has C's singular values, with circular padding T is column-orthogonal
    (T^T T = k^2 I, an isometry) when c_in <= s^2 filters and row-orthogonal
    (a co-isometry) otherwise, k = `k_coef_lip`; zero padding keeps it
    k-Lipschitz. `vanilla_export()` gives `Conv2DTranspose` ("same"/"valid")
    or [CircularPadding2D, Conv2DTranspose("valid"), Cropping2D] (circular).

    Args:
        filters: number of output channels.
        kernel_size: int or pair, >= `strides`.
        strides: int or pair (the upsampling factor).
        padding: "circular" (orthogonal), "same" or "valid" (k-Lipschitz).
        output_padding: must be None.
        data_format: "channels_last" or None.
        dilation_rate: must be 1 (refused otherwise).
        groups: must be 1 (refused otherwise).
        activation: activation after the bias; must be 1-Lipschitz for the layer to stay k-Lipschitz.
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw matrices (`StackedOrthogonal` by default).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw matrices.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw matrices.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant.
        bjorck_iterations: fixed Björck iterations of both orthonormalizations (20).
        power_iterations: power iterations of the Björck pre-scaling (10).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> up = AOCConv2DTranspose(16, 3, strides=2)
        >>> up(keras.random.normal((2, 8, 8, 32))).shape
        (2, 16, 16, 16)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        output_padding: Any = None,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation: str | Any | None = None,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | keras.regularizers.Regularizer | None = None,
        bias_regularizer: str | keras.regularizers.Regularizer | None = None,
        activity_regularizer: str | keras.regularizers.Regularizer | None = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        bias_constraint: str | keras.constraints.Constraint | None = None,
        k_coef_lip: float = 1.0,
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        **kwargs: Any,
    ) -> None:
        _refuse_unsupported(dilation_rate, groups, strides, transposed=True)
        if output_padding is not None:
            raise ValueError(f"output_padding must be None for AOCConv2DTranspose, got {output_padding!r}.")
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer or StackedOrthogonal(),
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            k_coef_lip=k_coef_lip,
            **kwargs,
        )
        self._init_aoc(bjorck_iterations, power_iterations)
        self.groups = 1
        self._transposed = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width, channels = input_shape[1:]
        if channels is None or channels < 1:
            raise ValueError(f"AOCConv2DTranspose needs a known number of input channels >= 1, got {input_shape}.")
        self._check_spatial(input_shape, divisible=False)
        self.input_spatial_size = (height, width)
        if self.padding == "circular":
            for size, kernel, stride in zip((height, width), self.kernel_size, self.strides):
                if max(_transposed_circular_pads(size, kernel, stride)[0]) > size:
                    raise ValueError(
                        f"kernel_size {self.kernel_size} is too large for circular padding of a {height}x{width} "
                        f"input with strides {self.strides}."
                    )
        self._build_aoc_weights(self.filters, channels, 1)
        self._add_bias(self.filters)
        self.build_kernel_cache(self.kernel_size + (self.filters, channels))
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def _circular_geometry(self):
        geometry = zip(self.input_spatial_size, self.kernel_size, self.strides)
        pads = [_transposed_circular_pads(n, k, s) for n, k, s in geometry]
        return tuple(p[0] for p in pads), tuple(p[1] for p in pads)

    def call(self, inputs: ArrayLike, training: bool | None = None):
        self.check_input_size(inputs.shape)
        kernel = self.kernel_for_call(training)
        if self.padding != "circular":
            outputs = ops.conv_transpose(inputs, kernel, strides=self.strides, padding=self.padding)
        else:
            pads, crops = self._circular_geometry()
            outputs = ops.conv_transpose(circular_pad(inputs, pads), kernel, strides=self.strides, padding="valid")
            (top, bottom), (left, right) = crops
            outputs = outputs[:, top : outputs.shape[1] - bottom, left : outputs.shape[2] - right, :]
        return self._bias_and_activation(outputs)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        sizes = []
        for size, k, s in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                sizes.append(None)
            elif self.padding == "valid":
                sizes.append((size - 1) * s + k)
            else:
                sizes.append(size * s)
        return (input_shape[0], *sizes, self.filters)

    def plain_layers(self, kernel: ArrayLike):
        layers = []
        in_shape = (None, *self.input_spatial_size, kernel.shape[3])
        padding = self.padding
        if padding == "circular":
            pads, crops = self._circular_geometry()
            pad = CircularPadding2D(pads, name=f"{self.name}_circular_pad")
            layers.append(pad)
            in_shape = pad.compute_output_shape(in_shape)
            padding = "valid"
        # Bias and activation commute with the crop (per channel, elementwise): they stay in the conv.
        conv = keras.layers.Conv2DTranspose(
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
        if self.padding == "circular":
            layers.append(keras.layers.Cropping2D(crops, name=f"{self.name}_crop", dtype=self.dtype_policy))
        return layers

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 norm of the bias-free transposed conv at `input_shape`: that of the conv it is the adjoint of."""
        shape = self._checked_shape(input_shape)
        out_size = self.compute_output_shape(shape)[1:3]
        return strided_conv_norm(self.effective_kernel(), out_size, self.strides, self.padding)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"output_padding": None, **self._aoc_config()})
        return config
