"""CPL: convex potential layers (Meunier et al., ICML 2022), dense and convolutional.

h(x) = x - P^T (s * relu(P x + b)) with s = 2 / (sigma^2 + eps), sigma an upper bound of ||P||_2: in value
the larger of a persistent power-iteration estimate (it carries the gradient) and a Gram-iteration bound
(`deel_lip_ext.parametrizations.norm_bounds`, at the build input size for convolutions), so s ||P||^2 <= 2 at
every optimizer step. The shared residual machinery and the certificate are in `deel_lip_ext.layers.sll_cpl`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._pinned_size import assert_spatial_size, check_spatial_size
from deel_lip_ext._validation import check_int
from deel_lip_ext.layers.sll_cpl import ResidualLipschitzBase, ResidualConvMixin
from deel_lip_ext.parametrizations import conv_norm_bound, cpl_scale, dense_norm_bound, operator_power_iteration

__all__ = ["CPLDense", "CPLConv2D"]


class _CPLMixin:
    def _init_power_iterations(self, power_iterations):
        self.power_iterations = check_int(power_iterations, "power_iterations")

    def _vector_shape(self, input_shape):
        return (1, input_shape[-1])

    def build_scale_state(self, input_shape):
        self.u = self.add_weight(
            name="u",
            shape=self._vector_shape(input_shape),
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            autocast=False,
        )
        # Start from a converged vector for the initial kernel (only the estimate's quality depends on it).
        self.u.assign(self._power_iteration(50)[1])

    def _power_iteration(self, iterations):
        kernel = ops.cast(self.kernel, "float32")
        return operator_power_iteration(
            lambda u: self.apply_p(u, kernel), lambda z: self.apply_p_adjoint(z, kernel), self.u, maxiter=iterations
        )

    def scale(self, training: bool | None = False):
        kernel = ops.cast(self.kernel, "float32")
        factor, u = cpl_scale(
            lambda x: self.apply_p(x, kernel),
            lambda z: self.apply_p_adjoint(z, kernel),
            self.u,
            self.units,
            self.power_iterations,
            self.eps,
            self.norm_bound(ops.stop_gradient(kernel)),
        )
        return factor, [(self.u, u)]

    def norm_bound(self, kernel):
        """A provable upper bound of ||P|| (Gram iteration; the conv's at the build input size)."""
        return dense_norm_bound(kernel)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CPLDense(_CPLMixin, ResidualLipschitzBase):
    """Convex Potential Layer x - 2 / ||K||^2 K relu(K^T x + b), in Keras layout (see the module docstring).

    Computes `x - s (relu(x K + b)) K^T`, s = 2 / (sigma^2 + eps), sigma an upper bound of ||K||_2: the larger
    of a power-iteration estimate with a persistent vector (`power_iterations` steps per call, stored in
    training; it carries the gradient) and a Gram-iteration bound. The certificate (`lipschitz_constant`) uses
    the exact float64 ||K||_2: max(1, 2 ||K||^2 / (sigma^2 + eps) - 1), which is 1 (up to the rounding of s
    and K under mixed precision).

    Args:
        units: number of hidden units.
        use_bias: whether to add a bias to the hidden units.
        kernel_initializer: initializer of the kernel (input_dim, units).
        bias_initializer: initializer of the bias.
        eps: positive number added to sigma^2.
        power_iterations: power-iteration steps per call (>= 1).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype).

    Examples:
        >>> layer = CPLDense(32)
        >>> y = layer(keras.random.normal((4, 16)))
        >>> layer.lipschitz_constant()  # 1.0
    """

    def __init__(
        self,
        units: int,
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        eps: float = 1e-6,
        power_iterations: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(units, use_bias, kernel_initializer, bias_initializer, eps, **kwargs)
        self._init_power_iterations(power_iterations)

    def get_config(self) -> dict:
        return {**super().get_config(), "power_iterations": self.power_iterations}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CPLConv2D(_CPLMixin, ResidualConvMixin, ResidualLipschitzBase):
    """Convolutional Convex Potential Layer: x - s P^T relu(P x + b), s = 2 / (sigma^2 + eps).

    sigma is an upper bound of the conv operator's norm at the build input size (which must be known): the
    larger of a power-iteration estimate with a persistent image-shaped vector (it carries the gradient) and
    a Gram-iteration bound over the frequencies of the (circular, or for "same" the (n + k // 2)) torus. The
    certificate uses the exact (or an upper bound of the) float64 operator norm at the input size:
    max(1, s ||P||^2 - 1), which is 1 (up to the rounding of s and K under mixed precision).

    Args:
        filters: number of hidden channels.
        kernel_size: odd int or pair of odd ints.
        padding: "same" (zero) or "circular".
        use_bias: whether to add a bias to the hidden channels.
        kernel_initializer: initializer of the kernel (kh, kw, channels, filters).
        bias_initializer: initializer of the bias.
        eps: positive number added to sigma^2.
        power_iterations: power-iteration steps per call (>= 1).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype).

    Examples:
        >>> layer = CPLConv2D(16, 3)
        >>> y = layer(keras.random.normal((2, 16, 16, 8)))
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int] = 3,
        padding: str = "same",
        use_bias: bool = True,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        eps: float = 1e-6,
        power_iterations: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, use_bias, kernel_initializer, bias_initializer, eps, **kwargs)
        self._init_conv(kernel_size, padding)
        self._init_power_iterations(power_iterations)

    def norm_bound(self, kernel):
        return conv_norm_bound(kernel, tuple(self.u.shape[1:3]), self.padding)

    def _vector_shape(self, input_shape):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(
                f"CPLConv2D needs known spatial dimensions (its power iteration runs at that size), got {input_shape}."
            )
        return (1, *input_shape[1:])

    # Its factor s comes from a power iteration at the build size: the layer is pinned to that size.
    def _size_message(self, input_shape):
        return (
            f"layer {self.name!r} was built for spatial size {tuple(self.u.shape[1:3])} (its power iteration and "
            f"Lipschitz constant hold at that size), got input shape {tuple(input_shape)}: use a new layer for "
            "this size."
        )

    def call(self, inputs: ArrayLike, training: bool | None = None):
        inputs = assert_spatial_size(inputs, tuple(self.u.shape[1:3]), self._size_message(inputs.shape))
        return super().call(inputs, training=training)

    def _lipschitz_constant(self, norm, input_shape):
        if input_shape is not None and self.built:
            check_spatial_size(input_shape, tuple(self.u.shape[1:3]), self._size_message(input_shape))
        return super()._lipschitz_constant(norm, input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), **self._conv_config(), "power_iterations": self.power_iterations}
