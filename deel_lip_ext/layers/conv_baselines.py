"""The convolutions the BCOP paper compares with (its Table 1 ablation), in the same geometry as BCOP.

All three use `DownsamplingConv2DBase`: a stride is an invertible
downsampling followed by a stride-1 convolution, circular padding by default.

* `OSSNConv2D`: one-sided spectral normalization (Gouk et al.). Power
  iteration on the true convolution operator at the real input size with a
  persistent vector (10 iterations per training step); the kernel is
  divided by max(sigma, 1).
* `RKOConv2D`: reshaped kernel orthogonalization. Björck (BCOP code settings)
  on the (kh * kw * c_in, c_out) matrix, times 1 / sqrt(max overlap), the
  exact factor for the padding (1/k for a circular k x k conv).
* `SVCMConv2D` + the `deel_lip_ext.callbacks.SVCMProjection` callback:
  singular value clipping and masking (Sedghi et al.). The kernel is
  unconstrained between projections; every N steps it is projected (FFT at
  the real input size, clip, inverse FFT, crop to the k x k support, 50
  times). Cropping leaves the norm slightly above the target: certify with
  the *measured* norm (`deel_lip_ext.utils.model_lipschitz_bound` measures it).

The constraints themselves are `deel_lip_ext.parametrizations.ossn_normalization`,
`orthonormalize_stack` and `clip_and_mask`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_int
from deel_lip_ext.layers.bcop import DownsamplingConv2DBase, OrthonormalStackMixin
from deel_lip_ext.parametrizations import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    clip_and_mask,
    ossn_normalization,
    ossn_spectral_norm,
    padded_conv_operator,
)

__all__ = ["OSSNConv2D", "RKOConv2D", "SVCMConv2D"]


class _RealSizeMixin:
    """Parametrizations that act on the operator at the real input size: they need known spatial dimensions."""

    def check_build_shape(self, input_shape):
        conv_sizes = self.conv_geometry().conv_input_shape(input_shape)[1:-1]
        if None in conv_sizes:
            raise ValueError(
                f"{type(self).__name__} {self.constrained_operator} at the real input size: it needs known spatial "
                f"dimensions, got {tuple(input_shape[1:-1])}."
            )


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class OSSNConv2D(_RealSizeMixin, DownsamplingConv2DBase):
    """Convolution with one-sided spectral normalization on its true operator (Gouk et al.).

    A persistent vector shaped like one output sample warm-starts
    `power_iterations` power iterations (no gradient) on the convolution
    operator at the real input size (after downsampling) and its adjoint;
    sigma = u^T A v is then differentiable in the kernel, and the kernel used
    is k * W / max(sigma, 1). Training stores the new vector; inference runs
    the same iterations from the stored vector, so the kernel is never stale.
    Power iteration approaches sigma from below: the exact norm is slightly
    above k until the vector has converged (certify with the measured norm).
    Its cost grows with the image size, unlike BCOP's.

    Args:
        filters: number of output channels.
        kernel_size: int or pair; a multiple of `strides`.
        strides: int or pair; implemented as an invertible downsampling.
        padding: "circular", "same" or "valid".
        data_format: "channels_last" or None (the only layout supported).
        activation: activation applied after the bias (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant targeted.
        power_iterations: iterations per call (10, as in the BCOP paper).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = OSSNConv2D(16, 3)
        >>> y = conv(keras.random.normal((2, 16, 16, 3)))
    """

    constrained_operator = "normalizes the operator"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        data_format: str | None = None,
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
        self.power_iterations = check_int(power_iterations, "power_iterations")

    def build_parametrization_state(self):
        output_shape = self.compute_output_shape((1,) + self.input_spatial_size + (None,))
        self.u = self.add_weight(
            name="u",
            shape=output_shape,
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def _operator(self):
        """(pads, circular) of the stride-1 conv after the downsampling: explicit zero or wrap-around pads."""
        pads = self.conv_geometry().pads()
        if self.padding == "same":
            pads = tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in self.conv_kernel_size)
        return pads or ((0, 0), (0, 0)), self.padding == "circular"

    def _operator_and_adjoint(self, kernel):
        """(forward, adjoint) callables of the stride-1 conv after the downsampling, with `kernel`."""
        return padded_conv_operator(kernel, *self._operator())

    def spectral_norm_estimate(self, kernel: ArrayLike | None = None):
        """`(sigma, new_u)`: power-iteration estimate of the operator norm (differentiable in the kernel)."""
        kernel = ops.cast(self.kernel if kernel is None else kernel, "float32")
        pads, circular = self._operator()
        return ossn_spectral_norm(kernel, self.u, pads, circular, self.power_iterations)

    def lipschitz_by_construction(self) -> bool:
        return False  # divided by a power-iteration estimate of the operator norm, which may be below it

    def compute_kernel(self):
        pads, circular = self._operator()
        kernel, u = ossn_normalization(
            ops.cast(self.kernel, "float32"), self.u, pads, circular, self.power_iterations, self.k_coef_lip
        )
        return kernel, [(self.u, u)]

    def get_config(self) -> dict:
        config = super().get_config()
        config["power_iterations"] = self.power_iterations
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class RKOConv2D(OrthonormalStackMixin, DownsamplingConv2DBase):
    """Reshaped kernel orthogonalization with the BCOP code's Björck settings.

    The kernel reshaped to (kh * kw * c_in, c_out) is divided by a
    power-iteration estimate of its norm (no gradient) and orthonormalized by
    20 fixed Björck iterations, then multiplied by k / sqrt(max overlap)
    (1 / sqrt(kh * kw) for a circular stride-1 conv), the exact correction
    for the padding at the real input size. 1-Lipschitz but not orthogonal:
    many singular values of the operator end well below 1.

    Args:
        filters: number of output channels.
        kernel_size: int or pair; a multiple of `strides`.
        strides: int or pair; implemented as an invertible downsampling.
        padding: "circular", "same" or "valid".
        data_format: "channels_last" or None (the only layout supported).
        activation: activation applied after the bias (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the raw kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the raw kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the raw kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: Lipschitz constant.
        bjorck_iterations: fixed Björck iterations (20).
        power_iterations: power iterations of the Björck pre-scaling (10).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = RKOConv2D(16, 3)
        >>> y = conv(keras.random.normal((2, 16, 16, 3)))
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
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
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
        kernel = ops.reshape(orthonormal, self.kernel.shape)
        return kernel * (self.lipschitz_coefficient * self.k_coef_lip), [(self.power_vectors, vectors)]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SVCMConv2D(_RealSizeMixin, DownsamplingConv2DBase):
    """Convolution kept near `k_coef_lip`-Lipschitz by singular value clipping and masking (Sedghi et al.).

    The kernel is an ordinary trainable kernel; `project()` (called every N
    training steps by the `deel_lip_ext.callbacks.SVCMProjection` callback)
    clips the singular values of the operator at the real input size (after
    downsampling; for zero padding, of the enclosing circular operator) and
    crops back to the kernel support, `num_projections` times. Between
    projections nothing constrains the kernel, and right after one the norm
    is slightly above `k_coef_lip` (e.g. 1.003 after 50 rounds): certify with
    the measured norm, `lipschitz_sv()` or `deel_lip_ext.utils.model_lipschitz_bound`.

    Args:
        filters: number of output channels.
        kernel_size: int or pair; a multiple of `strides`.
        strides: int or pair; implemented as an invertible downsampling.
        padding: "circular", "same" or "valid".
        data_format: "channels_last" or None (the only layout supported).
        activation: activation applied after the bias (counts in the Lipschitz constant).
        use_bias: whether to add a bias.
        kernel_initializer: initializer of the kernel ("glorot_uniform": it is unconstrained).
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the output.
        kernel_constraint: constraint of the kernel.
        bias_constraint: constraint of the bias.
        k_coef_lip: clipping level of the projection.
        num_projections: clip-and-crop rounds per projection (50).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> conv = SVCMConv2D(16, 3)
        >>> model.fit(x, y, callbacks=[SVCMProjection(every_n_steps=100)])
    """

    constrained_operator = "projects the operator"

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        data_format: str | None = None,
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
        num_projections: int = 50,
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
        self.num_projections = check_int(num_projections, "num_projections")

    def build_parametrization_state(self):
        if any(k > n for k, n in zip(self.conv_kernel_size, self.projection_size())):
            raise ValueError(f"kernel_size {self.kernel_size} is larger than the input {self.input_spatial_size}.")

    def projection_size(self):
        """The torus on which the operator is clipped: the input size, plus k - 1 for zero padding."""
        sizes = self.conv_input_shape[:2]
        if self.padding == "circular":
            return sizes
        return tuple(n + k - 1 for n, k in zip(sizes, self.conv_kernel_size))

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self):
        return ops.cast(self.kernel, "float32"), []

    def lipschitz_by_construction(self) -> bool:
        return False  # unconstrained between projections

    def project(self, num_projections: int | None = None):
        """Clip and mask the kernel now (eagerly, in float64); returns the measured norm afterwards."""
        projected = clip_and_mask(
            ops.convert_to_numpy(self.kernel),
            self.projection_size(),
            max_singular_value=self.k_coef_lip,
            iterations=self.num_projections if num_projections is None else num_projections,
        )
        self.kernel.assign(projected.astype(self.kernel.dtype))
        return self.lipschitz_sv()[1]

    def get_config(self) -> dict:
        config = super().get_config()
        config["num_projections"] = self.num_projections
        return config
