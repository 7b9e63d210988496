"""BCOP orthogonal convolutions (Li et al., NeurIPS 2019) and the Björck dense layer of their code.

`BCOPConv2D` builds a k x k kernel whose circular convolution is exactly
orthogonal (an isometry when c_in <= c_out, a co-isometry otherwise), hence
1-Lipschitz and gradient-norm preserving (GNP):

1. 2k-1 raw c x c matrices (c = max(c_in, c_out)), orthogonally initialized,
   are orthonormalized in one batched Björck call (20 fixed iterations,
   order 1, after a power-iteration pre-scaling that carries no gradient).
2. The first matrix is H; the first floor(c/2) columns M_i of each other one
   define the rank-floor(c/2) symmetric projectors P_i = M_i M_i^T.
3. The kernel is the block convolution of H with the 2x1 kernels [P; I-P]
   and the 1x2 kernels [Q, I-Q]. Their symbols P + (I-P) z are unitary on
   the unit circle, so the product's symbol is unitary at every frequency.
4. The c-channel kernel is sliced to c_in x c_out. Slicing H first and
   growing the block convolution from the sliced side gives the same kernel
   as slicing at the end, at a fraction of the cost.

A stride s is an `InvertibleDownSampling(s)` (a permutation) followed by a
stride-1 BCOP of kernel k/s, so the strided layer is orthogonal too. The
kernel's cost depends on c and k only, never on the batch or image size, and
inference reads a cached kernel (see `ParametrizedLayer`).

`DownsamplingConv2DBase` is the plumbing shared with the BCOP paper's
comparison convolutions (`deel_lip_ext.layers.conv_baselines`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.convolutional import LipschitzConv2DBase, conv_lipschitz_coefficient
from deel_lip_ext.layers.dense import LipschitzDenseBase
from deel_lip_ext.layers.padding import CircularPadding2D, circular_pad
from deel_lip_ext.layers.resampling import InvertibleDownSampling
from deel_lip_ext.spectrum import (
    MAX_DENSE_OPERATOR_SIZE,
    circular_pad_widths,
    conv_operator_matrix,
    conv_singular_values,
    conv_sv_range,
    operator_singular_values,
)

__all__ = [
    "BCOP_BJORCK_ITERATIONS",
    "BCOP_POWER_ITERATIONS",
    "StackedOrthogonal",
    "batched_bjorck",
    "batched_power_iteration",
    "orthonormalize_stack",
    "bcop_kernel",
    "DownsamplingConv2DBase",
    "BCOPConv2D",
    "BjorckDense",
]

# The settings of the official BCOP code (LConvNet), in training and at inference.
BCOP_BJORCK_ITERATIONS = 20
BCOP_POWER_ITERATIONS = 10


def _check_iterations(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class StackedOrthogonal(keras.initializers.Orthogonal):
    """Orthogonal initializer applied to each matrix of a stack (..., m, n) separately.

    `keras.initializers.Orthogonal` flattens all leading axes into one tall
    matrix, so the individual blocks of a stack are not orthogonal; BCOP needs
    each raw matrix orthogonal for its 20 Björck iterations to start converged.

    Args:
        gain: multiplicative factor.
        seed: int or `keras.random.SeedGenerator`.

    Examples:
        >>> stack = StackedOrthogonal(seed=0)((5, 8, 8))  # five 8 x 8 orthogonal matrices
    """

    def __init__(self, gain: float = 1.0, seed: int | None = None) -> None:
        super().__init__(gain=gain, seed=seed)

    def __call__(self, shape: tuple[int, ...], dtype: str | None = None):
        if len(shape) < 2:
            raise ValueError(f"StackedOrthogonal needs a shape of rank >= 2, got {shape}.")
        *batch, rows, cols = shape
        tall = (*batch, max(rows, cols), min(rows, cols))
        q, r = ops.qr(keras.random.normal(tall, seed=self.seed, dtype=dtype))
        # Sign fix of Q's columns: makes Q Haar-distributed, as in keras' Orthogonal.
        q = q * ops.expand_dims(ops.sign(ops.diagonal(r, axis1=-2, axis2=-1)), -2)
        if rows < cols:
            q = ops.swapaxes(q, -1, -2)
        return self.gain * q


def _transpose(x):
    return ops.swapaxes(x, -1, -2)


def _normalize(x, eps=1e-12):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), eps))


def batched_bjorck(matrices: ArrayLike, iterations: int = BCOP_BJORCK_ITERATIONS, beta: float = 0.5):
    """Björck-Bowie orthonormalization (order 1, fixed iterations) of every matrix of a stack.

    Iterates `W <- (1 + beta) W - beta W W^T W` with the Gram product on the
    smaller side; singular values in ]0, sqrt(3)[ converge to 1 and a value
    <= 1 never exceeds 1.

    Args:
        matrices: tensor (..., m, n), pre-scaled to singular values below sqrt(3).
        iterations: number of unrolled iterations.
        beta: step.

    Examples:
        >>> orthonormal = batched_bjorck(stack / 2.0, iterations=20)
    """
    tall = matrices.shape[-2] >= matrices.shape[-1]
    w = matrices
    for _ in range(iterations):
        if tall:
            w = (1 + beta) * w - beta * ops.matmul(w, ops.matmul(_transpose(w), w))
        else:
            w = (1 + beta) * w - beta * ops.matmul(ops.matmul(w, _transpose(w)), w)
    return w


def batched_power_iteration(
    matrices: ArrayLike, vectors: ArrayLike, iterations: int = BCOP_POWER_ITERATIONS
) -> tuple[Any, Any]:
    """Largest singular values of a stack (b, m, n) by power iteration, without gradient.

    Args:
        matrices: tensor (b, m, n).
        vectors: right singular vector estimates (b, n) (warm start).
        iterations: number of iterations.

    Returns:
        `(sigma, vectors)`: estimates (b,) (from below) and the new vectors.
    """
    matrices = ops.stop_gradient(matrices)
    v = _normalize(ops.stop_gradient(vectors))
    for _ in range(iterations):
        u = _normalize(ops.einsum("bmn,bn->bm", matrices, v))
        v = _normalize(ops.einsum("bmn,bm->bn", matrices, u))
    sigma = ops.sqrt(ops.sum(ops.square(ops.einsum("bmn,bn->bm", matrices, v)), axis=-1))
    return ops.stop_gradient(sigma), ops.stop_gradient(v)


def orthonormalize_stack(
    matrices: ArrayLike,
    vectors: ArrayLike,
    bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
    power_iterations: int = BCOP_POWER_ITERATIONS,
    dtype: str = "float32",
) -> tuple[Any, Any]:
    """The BCOP code's orthonormalization of a stack (b, m, n) of raw matrices, in `dtype` (float32).

    Each matrix is divided by its power-iteration estimate of sigma_max (no
    gradient through the scale) and orthonormalized by fixed Björck
    iterations (gradient through every iteration).

    Returns:
        `(orthonormal, vectors)`: the stack with orthonormal columns (rows if
        wide) and the new power-iteration vectors (b, n).

    Examples:
        >>> orthonormal, v = orthonormalize_stack(raw, v)
    """
    matrices = ops.cast(matrices, dtype)
    sigma, vectors = batched_power_iteration(matrices, ops.cast(vectors, dtype), power_iterations)
    scaled = matrices / ops.reshape(ops.maximum(sigma, 1e-12), (-1, 1, 1))
    return batched_bjorck(scaled, bjorck_iterations), vectors


class OrthonormalStackMixin:
    """A stack of raw matrices orthonormalized as in the BCOP code, with power-iteration vectors as state.

    `BCOPConv2D` orthonormalizes its 2k - 1 raw matrices; `BjorckDense` and
    `RKOConv2D` their kernel as one (fan_in, units) matrix (the default).

    Examples:
        >>> layer = BjorckDense(8)
        >>> layer.build((None, 16))
        >>> orthonormal, vectors = layer.orthonormal_matrices()  # (1, 16, 8), (1, 8)
    """

    def _init_orthonormalization(self, bjorck_iterations, power_iterations):
        self.bjorck_iterations = _check_iterations(bjorck_iterations, "bjorck_iterations")
        self.power_iterations = _check_iterations(power_iterations, "power_iterations")

    def raw_variable(self):
        """The trainable variable the stack is made of."""
        return self.kernel

    def raw_stack(self):
        """The (b, m, n) stack of raw matrices."""
        return ops.reshape(self.kernel, (1, -1, self.kernel.shape[-1]))

    def build_parametrization_state(self):
        count, _, columns = self.raw_stack().shape
        self.power_vectors = self.add_weight(
            name="power_vectors",
            shape=(count, columns),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def kernel_dependencies(self):
        return [self.raw_variable(), self.power_vectors]

    def orthonormal_matrices(self):
        """`(orthonormal stack, new power vectors)` of the current raw matrices (float32)."""
        return orthonormalize_stack(self.raw_stack(), self.power_vectors, self.bjorck_iterations, self.power_iterations)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"bjorck_iterations": self.bjorck_iterations, "power_iterations": self.power_iterations})
        return config


def _block_convolve(kernel, frame, axis, side):
    """Block convolution of `kernel` with the 2-tap kernel [P, I-P] along `axis`, P = frame frame^T.

    `kernel` holds taps (kh, kw, rows, cols) in Keras' row-vector convention
    (output = input @ tap). With K[-1] = K[m] = 0 the new taps are
    K[i-1] + (K[i] - K[i-1]) P when P acts after K (side "right") and
    K[i-1] + P (K[i] - K[i-1]) when it acts before (side "left").
    """
    zeros = ops.zeros_like(kernel[:1] if axis == 0 else kernel[:, :1])
    current = ops.concatenate([kernel, zeros], axis=axis)
    previous = ops.concatenate([zeros, kernel], axis=axis)
    difference = current - previous
    if side == "right":
        projected = ops.matmul(ops.matmul(difference, frame), ops.transpose(frame))
    else:
        projected = ops.matmul(frame, ops.matmul(ops.transpose(frame), difference))
    return previous + projected


def bcop_kernel(orthogonal: bool, kernel_size: int | tuple[int, int], in_channels: int, out_channels: int) -> Any:
    """The BCOP kernel (kh, kw, c_in, c_out) of a stack of orthogonal c x c matrices.

    Args:
        orthogonal: (kh + kw - 1, c, c) orthogonal matrices, c = max(c_in, c_out):
            H, then the kh - 1 vertical and kw - 1 horizontal projector frames
            (their first floor(c/2) columns).
        kernel_size: (kh, kw).
        in_channels: c_in, the input channels.
        out_channels: c_out, the output channels.

    Returns:
        A Keras kernel whose circular convolution is an isometry
        (c_in <= c_out) or a co-isometry (c_in > c_out).

    Examples:
        >>> kernel = bcop_kernel(orthonormal_stack, (3, 3), 16, 32)
    """
    kh, kw = kernel_size
    channels = orthogonal.shape[-1]
    frames = orthogonal[1:, :, : channels // 2]
    if in_channels <= out_channels:
        # c = c_out: H's first c_in rows; the projectors act after it, on the full side.
        kernel, side = orthogonal[0][:in_channels], "right"
    else:
        # c = c_in: H's first c_out columns; the projectors act before it.
        kernel, side = orthogonal[0][:, :out_channels], "left"
    kernel = ops.reshape(kernel, (1, 1) + tuple(kernel.shape))
    for i in range(max(kh, kw) - 1):
        if i < kh - 1:
            kernel = _block_convolve(kernel, frames[i], 0, side)
        if i < kw - 1:
            kernel = _block_convolve(kernel, frames[kh - 1 + i], 1, side)
    return kernel


class DownsamplingConv2DBase(LipschitzConv2DBase):
    """Convolution whose stride s is an invertible downsampling followed by a stride-1 conv of kernel k/s.

    The BCOP paper's wrapper for every convolution it compares (BCOP, RKO,
    OSSN, SVCM): `InvertibleDownSampling(s)` (a permutation, so it keeps
    orthogonality) then a stride-1 convolution of kernel k/s with the layer's
    padding, circular by default. `kernel_size` must be a multiple of
    `strides`. The effective kernel is the stride-1 kernel
    (k/s, k/s, c_in * s^2, filters) applied after the downsampling, and
    `vanilla_export()` gives [InvertibleDownSampling (if strided),
    CircularPadding2D (if circular), Conv2D].

    Subclasses create their raw variables in `build_raw_weights(kernel_shape)`
    and implement the `ParametrizedLayer` contract.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        for kernel, stride in zip(self.kernel_size, self.strides):
            if stride > kernel:
                raise ValueError(
                    f"strides {self.strides} must not exceed kernel_size {self.kernel_size}: a stride s is a "
                    "downsampling by s followed by a convolution of kernel kernel_size / s."
                )
            if kernel % stride:
                raise ValueError(
                    f"kernel_size {self.kernel_size} must be a multiple of strides {self.strides} (e.g. kernel 4, "
                    "stride 2): the stride is a downsampling followed by a convolution of kernel kernel_size / strides."
                )
        self.conv_kernel_size = tuple(k // s for k, s in zip(self.kernel_size, self.strides))
        self.downsampling = None
        if self.strides != (1, 1):
            self.downsampling = InvertibleDownSampling(self.strides, name=f"{self.name}_downsampling")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        height, width, channels = input_shape[1:]
        if channels is None or channels < 1:
            raise ValueError(
                f"{self.__class__.__name__} needs a known number of input channels >= 1, got {input_shape}."
            )
        for size, stride, axis in zip((height, width), self.strides, ("height", "width")):
            if size is not None and size % stride:
                raise ValueError(f"strides {self.strides} must divide the input {axis}, got input shape {input_shape}.")
        self.input_spatial_size = (height, width)
        self.conv_input_shape = (
            None if height is None else height // self.strides[0],
            None if width is None else width // self.strides[1],
            channels * self.strides[0] * self.strides[1],
        )
        self._check_conv_fits()
        self.lipschitz_coefficient = conv_lipschitz_coefficient(
            self.conv_input_shape[:2], self.conv_kernel_size, (1, 1), self.padding
        )
        kernel_shape = self.conv_kernel_size + (self.conv_input_shape[2], self.filters)
        self.build_raw_weights(kernel_shape)
        self._add_bias(self.filters)
        self.build_parametrization_state()
        self.build_kernel_cache(kernel_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def _check_conv_fits(self):
        sizes = self.conv_input_shape[:2]
        if self.padding == "circular":
            if None in sizes:
                raise ValueError(f"padding='circular' needs known spatial dimensions, got {self.input_spatial_size}.")
            for size, (before, after) in zip(sizes, circular_pad_widths(self.conv_kernel_size)):
                if max(before, after) > size:
                    raise ValueError(
                        f"kernel_size {self.kernel_size} is too large for circular padding of a "
                        f"{self.input_spatial_size} input with strides {self.strides}."
                    )
        elif self.padding == "valid":
            for size, kernel in zip(sizes, self.conv_kernel_size):
                if size is not None and size < kernel:
                    raise ValueError(
                        f"padding='valid' needs inputs at least kernel_size {self.kernel_size}, "
                        f"got {self.input_spatial_size}."
                    )

    def build_raw_weights(self, kernel_shape: tuple[int, ...]):
        """Create the raw variables (default: a raw `kernel` of the stride-1 kernel's shape)."""
        self.kernel = self._add_raw_kernel(kernel_shape)

    def conv_padding_widths(self):
        """((top, bottom), (left, right)) pads of the stride-1 convolution (zeros unless circular)."""
        if self.padding == "circular":
            return circular_pad_widths(self.conv_kernel_size)
        if self.padding == "same":
            return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in self.conv_kernel_size)
        return ((0, 0), (0, 0))

    def call(self, inputs, training=None):
        self.check_input_size(inputs.shape)
        if self.downsampling is not None:
            inputs = self.downsampling(inputs)
        padding = self.padding
        if padding == "circular":
            inputs = circular_pad(inputs, circular_pad_widths(self.conv_kernel_size))
            padding = "valid"
        outputs = ops.conv(inputs, self.kernel_for_call(training), strides=1, padding=padding)
        return self._bias_and_activation(outputs)

    def plain_layers(self, kernel: ArrayLike):
        layers = []
        if self.downsampling is not None:
            layers.append(InvertibleDownSampling(self.strides, name=f"{self.name}_downsampling"))
        conv_input = (None,) + self.conv_input_shape
        padding = self.padding
        if padding == "circular":
            pad = CircularPadding2D(circular_pad_widths(self.conv_kernel_size), name=f"{self.name}_circular_pad")
            layers.append(pad)
            conv_input = pad.compute_output_shape(conv_input)
            padding = "valid"
        conv = keras.layers.Conv2D(
            self.filters,
            self.conv_kernel_size,
            padding=padding,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
            dtype=self.dtype_policy,
        )
        conv.build(conv_input)
        conv.set_weights(self._plain_weights(kernel))
        layers.append(conv)
        return layers

    def _conv_input_shape(self, input_shape):
        """(H / s, W / s, c_in * s^2) of the stride-1 conv for `input_shape` (default: the build shape)."""
        shape = self._checked_shape(input_shape)
        return tuple(None if size is None else size // s for size, s in zip(shape[1:3], self.strides)) + (
            self.conv_input_shape[2],
        )

    def singular_values(self, input_shape: tuple | None = None):
        """Every singular value of the layer's linear operator at its real input size (numpy, float64).

        Circular padding: FFT of the stride-1 kernel at the downsampled size
        (the downsampling is a permutation and changes no singular value).
        Other paddings: SVD of the dense operator, for small inputs only.
        """
        conv_input_shape = self._conv_input_shape(input_shape)
        kernel = ops.convert_to_numpy(self.effective_kernel())
        if self.padding == "circular":
            return conv_singular_values(kernel, conv_input_shape[:2])
        if None in conv_input_shape or np.prod(conv_input_shape) > MAX_DENSE_OPERATOR_SIZE:
            raise ValueError(
                f"The full spectrum of a {self.padding!r}-padded convolution is only computed on known inputs of at "
                f"most {MAX_DENSE_OPERATOR_SIZE} values, got {conv_input_shape}."
            )
        operator = conv_operator_matrix(kernel, conv_input_shape, (1, 1), self.padding)
        return operator_singular_values(operator)

    def lipschitz_sv(self, input_shape: tuple | None = None):
        """Exact (min, max) singular values of the layer at its real input size.

        Computed on the stride-1 convolution after the downsampling (FFT for
        circular padding); for zero padding on big inputs, min is 0 and max a
        certified upper bound (the enclosing circular convolution's).
        """
        kernel = ops.convert_to_numpy(self.effective_kernel())
        return conv_sv_range(kernel, self._conv_input_shape(input_shape), (1, 1), self.padding)

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(min, max) singular values at `input_shape`: `lipschitz_sv`."""
        return self.lipschitz_sv(input_shape)

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 operator norm of downsampling + stride-1 conv at `input_shape` (the max of `lipschitz_sv`)."""
        return self.lipschitz_sv(input_shape)[1]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class BCOPConv2D(OrthonormalStackMixin, DownsamplingConv2DBase):
    """Orthogonal 2-D convolution by Block Convolution Orthogonal Parameterization (BCOP).

    With circular padding (default) the convolution is exactly orthogonal at
    every input size: an isometry when c_in * s^2 <= filters, a co-isometry
    otherwise, hence 1-Lipschitz (times `k_coef_lip`) and gradient-norm
    preserving. Zero padding ("same") keeps it 1-Lipschitz (a sub-matrix of
    the circular operator) but not GNP: an orthogonal zero-padded
    convolution must be 1 x 1.

    A stride s is `InvertibleDownSampling(s)` followed by a stride-1 BCOP of
    kernel k/s (k must be a multiple of s). The raw parameters are
    kh + kw - 1 orthogonally initialized c x c matrices, c = max(c_in * s^2,
    filters); see the module docstring for the construction. Kernel
    construction costs O(k^2 c^3), independent of batch and image size; at
    inference the kernel is cached.

    Args:
        filters: number of output channels.
        kernel_size: int or pair (kh, kw); a multiple of `strides`.
        strides: int or pair; implemented as an invertible downsampling.
        padding: "circular" (orthogonal), "same" or "valid" (1-Lipschitz).
        k_coef_lip: Lipschitz constant (the kernel is multiplied by it).
        bjorck_iterations: fixed Björck iterations (20 as in the BCOP code).
        power_iterations: power iterations of the Björck pre-scaling (10).
        kernel_initializer: initializer of the raw (kh + kw - 1, c, c)
            matrices; `StackedOrthogonal` by default (needed for Björck to
            converge in 20 iterations).
        **kwargs: `use_bias`, `bias_initializer`, `activation`, regularizers and
            constraints as in `keras.layers.Conv2D`; the activation must be
            1-Lipschitz for the layer to stay so.

    Examples:
        >>> conv = BCOPConv2D(32, 4, strides=2)  # downsampling by 2, then a 2 x 2 orthogonal conv
        >>> y = conv(keras.random.normal((8, 32, 32, 3)))  # (8, 16, 16, 32)
        >>> down, pad, plain = conv.vanilla_export()  # InvertibleDownSampling, CircularPadding2D, Conv2D
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        k_coef_lip: float = 1.0,
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            k_coef_lip=k_coef_lip,
            kernel_initializer=kernel_initializer or StackedOrthogonal(),
            **kwargs,
        )
        self._init_orthonormalization(bjorck_iterations, power_iterations)

    def build_raw_weights(self, kernel_shape: tuple[int, ...]):
        kh, kw, in_channels, out_channels = kernel_shape
        channels = max(in_channels, out_channels)
        self.raw_matrices = self._add_raw_kernel((kh + kw - 1, channels, channels), name="raw_matrices")

    def raw_variable(self):
        return self.raw_matrices

    def raw_stack(self):
        return self.raw_matrices

    def compute_kernel(self, training: bool | None = False):
        orthonormal, vectors = self.orthonormal_matrices()
        kernel = bcop_kernel(orthonormal, self.conv_kernel_size, self.conv_input_shape[2], self.filters)
        return kernel * self.k_coef_lip, [(self.power_vectors, vectors)]

    def condense(self):
        """Replace the raw matrices by their orthonormalized values (the layer's function is unchanged)."""
        self.raw_matrices.assign(ops.cast(self.orthonormal_matrices()[0], self.raw_matrices.dtype))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class BjorckDense(OrthonormalStackMixin, LipschitzDenseBase):
    """Dense layer of the BCOP code: Björck-orthonormalized kernel, exactly LConvNet's `BjorckLinear`.

    The kernel is divided by a power-iteration estimate of its largest
    singular value (10 iterations, no gradient through the scale) and
    orthonormalized by 20 fixed Björck iterations (order 1, beta 0.5), in
    training and at inference (cached). `SpectralDense` differs by letting
    the gradient flow through the scale and by its data-dependent stopping.
    All singular values are `k_coef_lip`: the layer is GNP for k = 1.

    Args:
        units: output dimension.
        k_coef_lip: Lipschitz constant.
        bjorck_iterations: fixed Björck iterations (20).
        power_iterations: power iterations of the pre-scaling (10).
        kernel_initializer: orthogonal by default (Björck starts converged).
        **kwargs: other arguments of `keras.layers.Dense`.

    Examples:
        >>> head = BjorckDense(10, use_bias=False)
        >>> logits = head(keras.random.normal((4, 100)))
    """

    def __init__(
        self,
        units: int,
        k_coef_lip: float = 1.0,
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        kernel_initializer: str | keras.initializers.Initializer = "orthogonal",
        **kwargs: Any,
    ) -> None:
        super().__init__(units, k_coef_lip=k_coef_lip, kernel_initializer=kernel_initializer, **kwargs)
        self._init_orthonormalization(bjorck_iterations, power_iterations)

    def compute_kernel(self, training: bool | None = False):
        orthonormal, vectors = self.orthonormal_matrices()
        return orthonormal[0] * self.k_coef_lip, [(self.power_vectors, vectors)]
