"""Lipschitz pooling: scaled average and L2-norm pooling over non-overlapping windows.

With disjoint windows of area A, average pooling is (1/sqrt(A))-Lipschitz
(each output is the mean of A inputs), so `ScaledAveragePooling2D` multiplies
it by sqrt(A) (a sum over the window divided by sqrt(A)): exactly 1-Lipschitz,
all singular values 1. L2-norm pooling maps each window to its Euclidean
norm, which is 1-Lipschitz on every window; windows are disjoint, so the
layer is too. Overlapping windows would count an input several times, hence
`strides` must equal `pool_size` and `padding` must be "valid".

The square root has an infinite derivative at 0 (deel-lip issue #9). The
L2 layers compute sqrt(sum(x^2) + eps^2) - eps instead: the norm of the
vector (x, eps) minus a constant, so still exactly 1-Lipschitz, within eps
of the true norm, and with gradient 0 at x = 0.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._pinned_size import assert_spatial_size
from deel_lip_ext._validation import check_channels_last, check_number, int_pair
from deel_lip_ext.layers.base import LipschitzLayer

__all__ = [
    "ScaledAveragePooling2D",
    "ScaledL2NormPooling2D",
    "ScaledL2NormPooling",
    "ScaledGlobalAveragePooling2D",
    "ScaledGlobalL2NormPooling2D",
]

DEFAULT_EPS_GRAD_SQRT = 1e-6


def _smooth_norm(sum_of_squares, eps, scale):
    """scale * (sqrt(sum_of_squares + eps^2) - eps): an exact norm shifted by a constant, smooth at 0."""
    dtype = sum_of_squares.dtype
    shifted = ops.sqrt(sum_of_squares + ops.convert_to_tensor(eps * eps, dtype)) if eps else ops.sqrt(sum_of_squares)
    root = shifted * ops.convert_to_tensor(scale, dtype)
    return root - ops.convert_to_tensor(scale * eps, dtype) if eps else root


def _l2_norm_pooled(inputs, pool_size, eps, scale):
    """scale * (sqrt(mean over each window of x^2 + eps^2) - eps), the window means by `average_pool`.

    Stock ops on every backend. On TensorFlow, oneDNN's average pooling and its gradient beat one XLA
    computation each way (the form before this one) once the layer sits after a convolution in a
    train step: measured on a 2-core CPU, conv + pooling forward and backward at (256, 28, 28, 16)
    6.2 ms against 10.6 ms (max pooling 4.5 ms), W1's train step 1.40x plain instead of 1.66x. JAX
    fuses the square into its average pooling; torch runs it as one kernel.
    """
    mean_square = ops.average_pool(ops.square(inputs), pool_size, strides=pool_size, padding="valid")
    return _smooth_norm(mean_square, eps, scale)


class _PoolingBase(LipschitzLayer, keras.layers.Layer):
    """k, data_format and config shared by the pooling layers."""

    def __init__(self, k_coef_lip: float = 1.0, data_format: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._init_lipschitz(k_coef_lip)
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def _rounded_constants(self):
        # The scale k sqrt(area), and the 1 / area a backend's mean may multiply by.
        return 2

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "data_format": self.data_format})
        return config


class _WindowPooling(_PoolingBase):
    """Non-overlapping `pool_size` windows: validation and output shape."""

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        k_coef_lip: float = 1.0,
        data_format: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        self.pool_size = int_pair(pool_size, "pool_size")
        if strides is not None and int_pair(strides, "strides") != self.pool_size:
            raise ValueError(
                f"strides must be None or equal to pool_size {self.pool_size} (non-overlapping windows, "
                f"otherwise the layer is not 1-Lipschitz), got {strides!r}."
            )
        if not isinstance(padding, str) or padding.lower() != "valid":
            raise ValueError(f"padding must be 'valid' (zero padding would change the window areas), got {padding!r}.")
        self.strides = self.pool_size
        self.padding = "valid"
        self.area = self.pool_size[0] * self.pool_size[1]

    def compute_output_shape(self, input_shape):
        sizes = [None if size is None else size // p for size, p in zip(input_shape[1:3], self.pool_size)]
        return (input_shape[0], *sizes, input_shape[3])

    def _lipschitz_constant(self, norm, input_shape):
        # k sqrt(area) times a window mean or root-mean-square: l_inf <= k sqrt(area).
        return self.k_coef_lip * (1.0 if norm == "l2" else math.sqrt(self.area))

    def _average(self, inputs):
        return ops.average_pool(inputs, self.pool_size, strides=self.pool_size, padding="valid")

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ScaledAveragePooling2D(_WindowPooling):
    """Average pooling times sqrt(window area) times `k_coef_lip`: exactly k-Lipschitz.

    Each output is k * sum(window) / sqrt(area). Windows do not overlap.

    Args:
        pool_size: int or pair of ints >= 1, the window (and stride).
        strides: None or equal to `pool_size`.
        padding: "valid" only.
        k_coef_lip: Lipschitz constant of the layer.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> ScaledAveragePooling2D((2, 2))(keras.ops.ones((1, 4, 4, 3)))  # all 2.0, shape (1, 2, 2, 3)
    """

    def call(self, inputs: ArrayLike):
        return self._average(inputs) * ops.convert_to_tensor(self.k_coef_lip * math.sqrt(self.area), inputs.dtype)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ScaledL2NormPooling2D(_WindowPooling):
    """L2-norm pooling: k * sqrt(sum over the window of x^2), exactly k-Lipschitz.

    Computed as k * (sqrt(sum(x^2) + eps^2) - eps) with eps = `eps_grad_sqrt`,
    which is within k * eps of the true norm, exactly k-Lipschitz and has a
    finite gradient (0) at x = 0. Windows do not overlap.

    Args:
        pool_size: int or pair of ints >= 1, the window (and stride).
        strides: None or equal to `pool_size`.
        padding: "valid" only.
        k_coef_lip: Lipschitz constant of the layer.
        eps_grad_sqrt: smoothing of the square root at 0, >= 0 (0: plain sqrt,
            with an infinite gradient at 0).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> ScaledL2NormPooling2D((2, 2))(keras.ops.ones((1, 4, 4, 3)))  # all ~2.0, shape (1, 2, 2, 3)
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        k_coef_lip: float = 1.0,
        eps_grad_sqrt: float = DEFAULT_EPS_GRAD_SQRT,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        self.eps_grad_sqrt = check_number(eps_grad_sqrt, "eps_grad_sqrt", minimum=0)

    def _mean_square_constants(self):
        """(eps, scale) of `_smooth_norm` over window means of squares: sum(x^2) = area * mean(x^2), folded
        into the final scale, k sqrt(A) sqrt(mean + eps^2 / A)."""
        return self.eps_grad_sqrt / math.sqrt(self.area), self.k_coef_lip * math.sqrt(self.area)

    def call(self, inputs: ArrayLike):
        eps, scale = self._mean_square_constants()
        return _l2_norm_pooled(inputs, self.pool_size, eps, scale)

    def get_config(self) -> dict:
        config = super().get_config()
        config["eps_grad_sqrt"] = self.eps_grad_sqrt
        return config


ScaledL2NormPooling = ScaledL2NormPooling2D


class _GlobalPooling(_PoolingBase):
    """Pools all of H x W into one value per channel: output (N, C)."""

    def build(self, input_shape):
        height, width = input_shape[1:3]
        if height is None or width is None:
            raise ValueError(
                f"{type(self).__name__} needs the height and width known at build time, got input shape {input_shape}."
            )
        self.area = height * width
        self.pinned_size = (int(height), int(width))
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])

    def _actual_area(self, input_shape, strict=True):
        sizes = (None, None) if input_shape is None else tuple(input_shape)[1:3]
        if None in sizes:
            if not strict:
                return None
            raise ValueError(f"layer {self.name!r}: its Lipschitz constant needs a known input height and width.")
        return int(sizes[0]) * int(sizes[1])


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ScaledGlobalAveragePooling2D(_GlobalPooling):
    """Global average pooling times sqrt(H * W) times `k_coef_lip`: exactly k-Lipschitz.

    Each output is k * sum over H x W / sqrt(H * W); H and W must be known at
    build time.

    Args:
        k_coef_lip: Lipschitz constant of the layer.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> ScaledGlobalAveragePooling2D()(keras.ops.ones((1, 4, 4, 3)))  # all 4.0, shape (1, 3)
    """

    def call(self, inputs):
        # The scale sqrt(H W) is the build size's: another size would change the constant. Checked when
        # traced and, where TensorFlow traces an unknown size, when it runs.
        inputs = assert_spatial_size(
            inputs,
            self.pinned_size,
            f"layer {self.name!r} was built for {self.pinned_size[0]} x {self.pinned_size[1]} inputs (its scale "
            f"sqrt(H W) depends on the size), got input shape {tuple(inputs.shape)}: use a new layer for this size.",
        )
        scale = ops.convert_to_tensor(self.k_coef_lip * math.sqrt(self.area), inputs.dtype)
        return ops.mean(inputs, axis=(1, 2)) * scale

    def _lipschitz_constant(self, norm, input_shape):
        # k sqrt(H W) times the mean over the H W pixels (size pinned at build).
        if norm == "linf":
            if not self.built:
                raise ValueError(f"layer {self.name!r} must be built before its l_inf constant is known.")
            return self.k_coef_lip * math.sqrt(self.area)
        return self.k_coef_lip


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ScaledGlobalL2NormPooling2D(_GlobalPooling):
    """Global L2-norm pooling: k * the norm of each channel over H x W, exactly k-Lipschitz.

    Computed as k * (sqrt(sum(x^2) + eps^2) - eps), smooth at 0 (see
    `ScaledL2NormPooling2D`).

    Args:
        k_coef_lip: Lipschitz constant of the layer.
        eps_grad_sqrt: smoothing of the square root at 0, >= 0.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> ScaledGlobalL2NormPooling2D()(keras.ops.ones((1, 4, 4, 3)))  # all ~4.0, shape (1, 3)
    """

    def __init__(
        self,
        k_coef_lip: float = 1.0,
        eps_grad_sqrt: float = DEFAULT_EPS_GRAD_SQRT,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        self.eps_grad_sqrt = check_number(eps_grad_sqrt, "eps_grad_sqrt", minimum=0)

    def call(self, inputs: ArrayLike):
        return _smooth_norm(ops.sum(ops.square(inputs), axis=(1, 2)), self.eps_grad_sqrt, self.k_coef_lip)

    def _lipschitz_constant(self, norm, input_shape):
        # k times the L2 norm of each channel's map: l_inf <= k sqrt(H W).
        return self.k_coef_lip * (1.0 if norm == "l2" else math.sqrt(self._actual_area(input_shape)))

    def get_config(self):
        config = super().get_config()
        config["eps_grad_sqrt"] = self.eps_grad_sqrt
        return config
