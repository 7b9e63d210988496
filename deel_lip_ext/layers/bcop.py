"""BCOP orthogonal convolutions (Li et al., NeurIPS 2019) and the Björck dense layer of their code.

`BCOPConv2D` builds a k x k kernel whose circular convolution is exactly
orthogonal (an isometry when c_in <= c_out, a co-isometry otherwise), hence
1-Lipschitz and gradient-norm preserving (GNP): kh + kw - 1 raw c x c matrices
(c = max(c_in, c_out)) are orthonormalized in one batched Björck call and
assembled by block convolutions of projectors
(`deel_lip_ext.parametrizations.bcop_kernel`).

A stride s is an `InvertibleDownSampling(s)` (a permutation) followed by a
stride-1 BCOP of kernel k/s, so the strided layer is orthogonal too. The
kernel's cost depends on c and k only, never on the batch or image size, and
inference reads a cached kernel (see `ParametrizedLayer`).

`DownsamplingConv2DBase` is the geometry shared with the BCOP paper's
comparison convolutions (`deel_lip_ext.layers.conv_baselines`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from deel_lip_ext._validation import check_int
from deel_lip_ext.initializers import StackedOrthogonal
from deel_lip_ext.layers.conv_base import ConvGeometry, LipschitzConv
from deel_lip_ext.layers.dense import LipschitzDenseBase
from deel_lip_ext.parametrizations import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    bcop_kernel,
    orthonormalize_stack,
)
from deel_lip_ext.spectrum import (
    MAX_DENSE_OPERATOR_SIZE,
    conv_operator_matrix,
    conv_singular_values,
    operator_singular_values,
)

__all__ = ["DownsamplingConv2DBase", "BCOPConv2D", "BjorckDense", "StackedOrthogonal"]


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
        self.bjorck_iterations = check_int(bjorck_iterations, "bjorck_iterations")
        self.power_iterations = check_int(power_iterations, "power_iterations")

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


class DownsamplingConv2DBase(LipschitzConv):
    """Convolution whose stride s is an invertible downsampling followed by a stride-1 conv of kernel k/s.

    The BCOP paper's wrapper for every convolution it compares (BCOP, RKO,
    OSSN, SVCM): `InvertibleDownSampling(s)` (a permutation, so it keeps
    orthogonality) then a stride-1 convolution of kernel k/s with the layer's
    padding, circular by default. `kernel_size` must be a multiple of
    `strides`. The effective kernel is the stride-1 kernel
    (k/s, k/s, c_in * s^2, filters) applied after the downsampling, and
    `vanilla_export()` gives [InvertibleDownSampling (if strided),
    CircularPadding2D (if circular), Conv2D]. Its only difference from
    `LipschitzConv` is its geometry.

    Args:
        filters: number of output channels.
        kernel_size: int or pair k, a multiple of `strides` (the stride-1 conv's kernel is k / s).
        strides: int or pair s, the downsampling factor (each s <= k); (1, 1): no downsampling.
        padding: padding of the stride-1 convolution: "circular" (default), "same" or "valid".
        **kwargs: the other `LipschitzConv` arguments (activation, use_bias, initializers, k_coef_lip, name, ...).
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

    def conv_geometry(self) -> ConvGeometry:
        """Downsampling by the strides, then a stride-1 convolution of kernel kernel_size / strides."""
        return ConvGeometry(
            tuple(k // s for k, s in zip(self.kernel_size, self.strides)),
            (1, 1),
            self.padding,
            downsampling=None if self.strides == (1, 1) else self.strides,
        )

    def singular_values(self, input_shape: tuple | None = None) -> np.ndarray:
        """Every singular value of the layer's linear operator at its real input size (numpy, float64).

        Circular padding: FFT of the stride-1 kernel at the downsampled size
        (the downsampling is a permutation and changes no singular value).
        Other paddings: SVD of the dense operator, for small inputs only.
        """
        conv_input_shape = self.conv_geometry().conv_input_shape(self._checked_shape(input_shape))[1:]
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
        data_format: "channels_last" or None (the only layout supported).
        activation: activation applied after the bias; it must be 1-Lipschitz
            for the layer to stay so (it counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw (kh + kw - 1, c, c)
            matrices; `StackedOrthogonal` by default (needed for Björck to
            converge in 20 iterations).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw matrices.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw matrices.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant (the kernel is multiplied by it).
        bjorck_iterations: fixed Björck iterations (20 as in the BCOP code).
        power_iterations: power iterations of the Björck pre-scaling (10).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

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
        data_format: str | None = None,
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
        self._init_orthonormalization(bjorck_iterations, power_iterations)

    def build_raw_weights(self, kernel_shape: tuple[int, ...]):
        kh, kw, in_channels, out_channels = kernel_shape
        channels = max(in_channels, out_channels)
        self.raw_matrices = self._add_raw_kernel((kh + kw - 1, channels, channels), name="raw_matrices")

    def raw_variable(self):
        return self.raw_matrices

    def raw_stack(self):
        return self.raw_matrices

    def compute_kernel(self):
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
        activation: activation applied to the output (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel; orthogonal by default (Björck starts converged).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant.
        bjorck_iterations: fixed Björck iterations (20).
        power_iterations: power iterations of the pre-scaling (10).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> head = BjorckDense(10, use_bias=False)
        >>> logits = head(keras.random.normal((4, 100)))
    """

    def __init__(
        self,
        units: int,
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
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            units,
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
        self._init_orthonormalization(bjorck_iterations, power_iterations)

    def compute_kernel(self):
        orthonormal, vectors = self.orthonormal_matrices()
        return orthonormal[0] * self.k_coef_lip, [(self.power_vectors, vectors)]
