r"""AOC orthogonal convolutions (Boissin et al., 2025): BCOP composed with a strided RKO, by kernel convolution.

A k x k convolution with stride s (k >= s) is built as the composition of

1. a stride-1 BCOP convolution c_in -> c_in of kernel k - s + 1 (square, so
   exactly orthogonal under circular padding, `deel_lip_ext.layers.bcop`), and
2. a stride-s convolution c_in -> c_out of kernel s x s whose reshaped
   kernel (s * s * c_in, c_out) is Björck-orthonormalized (RKO): it reads
   each pixel once, so it is a permutation (`InvertibleDownSampling`)
   followed by an orthogonal 1 x 1 map,

merged into one kernel $K[t] = \sum_{p + q = t} B[p] \, R[q]$ of size k
(`deel_lip_ext.parametrizations.aoc_kernel`). The layer runs ONE plain
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

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from deel_lip_ext._validation import check_int
from deel_lip_ext.initializers import StackedOrthogonal
from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.parametrizations import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    aoc_kernel,
    orthonormalize_stack,
)
from deel_lip_ext.spectrum import conv_singular_values, dilated_kernel, polyphase_kernel, strided_conv_norm

__all__ = ["AOCConv2D", "AOCConv2DTranspose"]


class _AOCKernelMixin:
    """The AOC parametrization: a square BCOP kernel composed with a strided RKO kernel.

    `aoc_in` / `aoc_out` are the channels of one group of the convolution the
    kernel defines (for the transposed layer: filters -> c_in).
    """

    supports_groups = True

    def _init_aoc(self, bjorck_iterations, power_iterations):
        self.bjorck_iterations = check_int(bjorck_iterations, "bjorck_iterations")
        self.power_iterations = check_int(power_iterations, "power_iterations")
        for kernel, stride in zip(self.kernel_size, self.strides):
            if kernel < stride:
                raise ValueError(
                    f"kernel_size {self.kernel_size} must be >= strides {self.strides}: a stride larger than the "
                    "kernel skips input pixels, which no orthogonal convolution does."
                )
        self.bcop_kernel_size = tuple(k - s + 1 for k, s in zip(self.kernel_size, self.strides))

    def build_raw_weights(self, kernel_shape):
        """Raw matrices of `groups` independent AOC kernels (aoc_in -> aoc_out each)."""
        self.aoc_in, self.aoc_out = kernel_shape[2], kernel_shape[3] // self.groups
        kh, kw = self.bcop_kernel_size
        count = self.groups * (kh + kw - 1)
        self.bcop_matrices = self._add_raw_kernel((count, self.aoc_in, self.aoc_in), name="bcop_matrices")
        rows = self.strides[0] * self.strides[1] * self.aoc_in
        self.rko_matrix = self._add_raw_kernel((self.groups, rows, self.aoc_out), name="rko_matrix")

    def build_parametrization_state(self):
        count = self.bcop_matrices.shape[0]
        self.bcop_vectors, self.rko_vectors = (
            self.add_weight(
                name=name,
                shape=shape,
                initializer=keras.initializers.RandomNormal(0.0, 1.0),
                trainable=False,
                dtype="float32",
                autocast=False,
            )
            for name, shape in (("bcop_vectors", (count, self.aoc_in)), ("rko_vectors", (self.groups, self.aoc_out)))
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

    def compute_kernel(self):
        squares, matrices, updates = self._orthonormal()
        kernel = aoc_kernel(squares, matrices, self.bcop_kernel_size, self.strides, self.groups)
        return kernel * self.k_coef_lip, updates

    def condense(self):
        """Replace the raw matrices by their orthonormalized values (the layer's function is unchanged)."""
        squares, matrices, _ = self._orthonormal()
        self.bcop_matrices.assign(squares)
        self.rko_matrix.assign(matrices)

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values of the bias-free map at `input_shape` (default: the build shape).

        Circular padding: exact, from the FFT of each group's polyphase kernel
        (`min` over the min(#inputs, #outputs) singular values; transposition,
        dilation and groups included). Zero padding: `(0.0, operator_norm)`,
        a range (the max exact or a certified bound).
        """
        norm = self.operator_norm(input_shape)
        if self.padding != "circular":
            return 0.0, norm
        shape = self._checked_shape(input_shape)
        kernel = np.asarray(ops.convert_to_numpy(self.effective_kernel()), dtype=np.float64)
        if self.transposed:
            sizes = self.compute_output_shape(shape)[1:3]
        else:
            sizes, kernel = shape[1:3], dilated_kernel(kernel, self.dilation_rate)
        torus = tuple(n // s for n, s in zip(sizes, self.strides))
        width, low = kernel.shape[-1] // self.groups, np.inf
        for j in range(self.groups):
            poly = polyphase_kernel(kernel[..., j * width : (j + 1) * width], self.strides)
            values = conv_singular_values(poly, torus)
            full = values.size >= torus[0] * torus[1] * min(poly.shape[2:])
            low = min(low, float(values.min()) if full else 0.0)
        return low, norm

    def _aoc_config(self):
        return {"bjorck_iterations": self.bjorck_iterations, "power_iterations": self.power_iterations}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class AOCConv2D(_AOCKernelMixin, LipschitzConv):
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

    supports_dilation = True

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation: str | Callable | None = None,
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
        if self.dilation_rate != (1, 1) and self.strides != (1, 1):
            raise ValueError(
                f"dilation_rate must be 1 for a strided AOCConv2D, got {dilation_rate!r}: dilation is implemented "
                "for stride-1 AOCConv2D only (Keras has no strided dilated convolution either)."
            )
        if self.filters % self.groups:
            raise ValueError(f"filters ({filters}) must be divisible by groups ({groups}).")

    def check_build_shape(self, input_shape):
        if self.padding == "circular" and None not in input_shape[1:3]:
            if any(size % stride for size, stride in zip(input_shape[1:3], self.strides)):
                raise ValueError(
                    f"padding='circular' with strides {self.strides} needs sizes divisible by the strides (the "
                    f"operator is orthogonal on such tori only), got input shape {tuple(input_shape)}."
                )

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 norm of the bias-free (strided or dilated) convolution at `input_shape` (`spectrum.strided_conv_norm`)."""
        shape = self._checked_shape(input_shape)
        kernel = dilated_kernel(np.asarray(ops.convert_to_numpy(self.effective_kernel())), self.dilation_rate)
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
class AOCConv2DTranspose(_AOCKernelMixin, LipschitzConv):
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

    transposed = True
    supports_groups = False

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
        activation: str | Callable | None = None,
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
        if output_padding is not None:
            raise ValueError(f"output_padding must be None for AOCConv2DTranspose, got {output_padding!r}.")
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

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 norm of the bias-free transposed conv at `input_shape`: that of the conv it is the adjoint of."""
        shape = self._checked_shape(input_shape)
        out_size = self.compute_output_shape(shape)[1:3]
        return strided_conv_norm(self.effective_kernel(), out_size, self.strides, self.padding)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"output_padding": None, **self._aoc_config()})
        return config
