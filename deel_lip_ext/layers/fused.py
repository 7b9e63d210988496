"""`GroupSort2` followed by `ScaledL2NormPooling2D`, in one pass: what `vanilla_export` makes of the two.

A plain network pays nothing for its ReLU: oneDNN runs it inside the convolution. A separate
activation costs one more pass over the convolution's output (read and write), and the pooling
another read: on a 2-core CPU, (256, 28, 28, 16) float32, GroupSort2 2.4 ms and L2-norm pooling
1.9 ms where max pooling takes 1.4 ms. Sorting each pair while reading a pooling window makes
the two one pass (1.7 ms), so an exported Lipschitz network costs about what the plain one costs.
The values are those of the two layers in a row (the sort only permutes entries).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._xla import compiled_by_xla
from deel_lip_ext.layers.activations import FullSort, GroupSort, GroupSort2
from deel_lip_ext.layers.base import check_k_coef_lip
from deel_lip_ext.layers.pooling import DEFAULT_EPS_GRAD_SQRT, ScaledL2NormPooling2D, _smooth_norm

__all__ = ["GroupSort2L2NormPooling2D", "fusable", "fused"]


def _windows(inputs, pool_size):
    """(N, H, W, C) -> (N, H // ph, ph, W // pw, pw, C): the disjoint windows (a remainder is dropped, as "valid")."""
    (ph, pw), (height, width, channels) = pool_size, inputs.shape[1:]
    rows, columns = height // ph, width // pw
    if (rows * ph, columns * pw) != (height, width):
        inputs = inputs[:, : rows * ph, : columns * pw, :]
    return ops.reshape(inputs, (-1, rows, ph, columns, pw, channels))


def _sorted_pairs_l2_norm_pooled_math(inputs, pool_size, eps, scale, sort_scale):
    """L2-norm pooling (`scale`, `eps`) of `sort_scale` * GroupSort2(inputs), the pairs sorted inside each window."""
    windows = _windows(inputs, pool_size)
    _, rows, ph, columns, pw, channels = windows.shape
    pairs = ops.reshape(windows, (-1, rows, ph, columns, pw, channels // 2, 2))
    # min/max give the sorted values exactly; this layer is for inference (GroupSort2 itself keeps
    # the permutation-Jacobian select form that training needs at ties).
    first, second = pairs[..., 0], pairs[..., 1]
    sorted_pairs = ops.stack([ops.minimum(first, second), ops.maximum(first, second)], axis=-1)
    mean_square = ops.mean(ops.square(sorted_pairs), axis=(2, 4))
    if sort_scale != 1.0:
        mean_square = mean_square * ops.convert_to_tensor(sort_scale * sort_scale, mean_square.dtype)
    return ops.reshape(_smooth_norm(mean_square, eps, scale), (-1, rows, columns, channels))


_sorted_pairs_l2_norm_pooled = compiled_by_xla(_sorted_pairs_l2_norm_pooled_math)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort2L2NormPooling2D(ScaledL2NormPooling2D):
    """`GroupSort2(k_coef_lip=sort_k_coef_lip)` then `ScaledL2NormPooling2D`, in one pass over the input.

    `vanilla_export` puts it where a `GroupSort2` feeds only a `ScaledL2NormPooling2D`:
    the same values as the two layers (to float rounding), about the cost of the
    pooling alone. Lipschitz constant: `sort_k_coef_lip * k_coef_lip` (L2), times
    sqrt(area) in l_inf, as the two layers in a row.

    Args:
        pool_size: int or pair of ints >= 1, the window (and stride).
        strides: None or equal to `pool_size`.
        padding: "valid" only.
        k_coef_lip: Lipschitz constant of the pooling.
        eps_grad_sqrt: smoothing of the square root at 0, >= 0 (see `ScaledL2NormPooling2D`).
        sort_k_coef_lip: Lipschitz constant of the GroupSort2 (its outputs are multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> fused = GroupSort2L2NormPooling2D((2, 2))
        >>> fused(keras.ops.ones((1, 4, 4, 2))).shape  # (1, 2, 2, 2), as GroupSort2 then L2 pooling
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = (2, 2),
        strides: int | tuple[int, int] | None = None,
        padding: str = "valid",
        k_coef_lip: float = 1.0,
        eps_grad_sqrt: float = DEFAULT_EPS_GRAD_SQRT,
        sort_k_coef_lip: float = 1.0,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, k_coef_lip, eps_grad_sqrt, data_format, **kwargs)
        self.sort_k_coef_lip = check_k_coef_lip(sort_k_coef_lip)
        self._sort = GroupSort2(k_coef_lip=self.sort_k_coef_lip)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self._sort.build(input_shape)  # checks the channel count: even, known
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        if None in inputs.shape[1:]:  # sizes known only at run time: the two layers' own paths
            return super().call(self._sort(inputs))
        eps, scale = self._mean_square_constants()
        return _sorted_pairs_l2_norm_pooled(inputs, self.pool_size, eps, scale, self.sort_k_coef_lip)

    def _lipschitz_constant(self, norm, input_shape):
        # GroupSort2 is sort_k-Lipschitz in every l_p norm (a scaled permutation).
        return self.sort_k_coef_lip * super()._lipschitz_constant(norm, input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config["sort_k_coef_lip"] = self.sort_k_coef_lip
        return config


def fusable(layer: keras.layers.Layer, following: keras.layers.Layer) -> bool:
    """Whether `following(layer(x))` is one `GroupSort2L2NormPooling2D`: a built pairwise sort, then L2 pooling."""
    return (
        type(layer) in (GroupSort, GroupSort2, FullSort)
        and layer.built
        and layer.group_size == 2
        and type(following) is ScaledL2NormPooling2D
    )


def fused(layer: GroupSort2, following: ScaledL2NormPooling2D) -> GroupSort2L2NormPooling2D:
    """The `GroupSort2L2NormPooling2D` computing `following(layer(x))`, named after `following`."""
    config = following.get_config()
    config["sort_k_coef_lip"] = layer.k_coef_lip
    return GroupSort2L2NormPooling2D.from_config(config)
