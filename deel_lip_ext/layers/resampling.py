"""Invertible down- and up-sampling: space-to-depth and depth-to-space permutations.

`InvertibleDownSampling(s)` maps (N, H, W, C) to (N, H/s_h, W/s_w, C s_h s_w)
by moving each s_h x s_w block of pixels into the channels, with the
PyTorch `PixelUnshuffle` / LConvNet channel order: output channel
c * s_h * s_w + i * s_w + j holds input channel c at offset (i, j) of the
block (this is *not* `tf.nn.space_to_depth`'s order, (i * s_w + j) * C + c).
`InvertibleUpSampling(s)` is its exact inverse (`PixelShuffle`).

Both only move values, so they are orthogonal maps: norm-preserving, GNP and
exactly 1-Lipschitz. They take no `k_coef_lip`. BCOP networks use the down
sampling instead of strided convolutions.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_channels_last, int_pair
from deel_lip_ext.layers.base import LipschitzBounded

__all__ = ["InvertibleDownSampling", "InvertibleUpSampling", "pixel_unshuffle", "pixel_shuffle"]


def pixel_unshuffle(inputs: ArrayLike, pool_size: tuple[int, int]) -> Any:
    """Space-to-depth with PixelUnshuffle channel order: (N, H, W, C) -> (N, H/s_h, W/s_w, C s_h s_w).

    Args:
        inputs: channels-last batch (N, H, W, C), H a multiple of s_h and W of s_w.
        pool_size: the block size `(s_h, s_w)`, a pair of ints.

    Returns:
        A tensor (N, H/s_h, W/s_w, C s_h s_w): output channel c s_h s_w + i s_w + j is channel c at offset (i, j).

    Examples:
        >>> pixel_unshuffle(keras.ops.ones((1, 8, 8, 3)), (2, 2)).shape
        (1, 4, 4, 12)
    """
    (sh, sw), (height, width, channels) = pool_size, inputs.shape[1:]
    height, width = _spatial_sizes(inputs, height, width)
    blocks = ops.reshape(inputs, (-1, height // sh, sh, width // sw, sw, channels))
    # (N, H/s, s_h, W/s, s_w, C) -> (N, H/s, W/s, C, s_h, s_w): channel-major, then block offset.
    blocks = ops.transpose(blocks, (0, 1, 3, 5, 2, 4))
    return ops.reshape(blocks, (-1, height // sh, width // sw, channels * sh * sw))


def pixel_shuffle(inputs: ArrayLike, pool_size: tuple[int, int]) -> Any:
    """Depth-to-space, the inverse of `pixel_unshuffle`: (N, H, W, C s_h s_w) -> (N, H s_h, W s_w, C).

    Args:
        inputs: channels-last batch (N, H, W, C'), C' a multiple of s_h * s_w.
        pool_size: the block size `(s_h, s_w)`, a pair of ints.

    Returns:
        A tensor (N, H s_h, W s_w, C' / (s_h s_w)).

    Examples:
        >>> pixel_shuffle(keras.ops.ones((1, 4, 4, 12)), (2, 2)).shape
        (1, 8, 8, 3)
    """
    (sh, sw), (height, width, channels) = pool_size, inputs.shape[1:]
    height, width = _spatial_sizes(inputs, height, width)
    out_channels = channels // (sh * sw)
    blocks = ops.reshape(inputs, (-1, height, width, out_channels, sh, sw))
    # (N, H, W, C, s_h, s_w) -> (N, H, s_h, W, s_w, C): undo pixel_unshuffle's transpose.
    blocks = ops.transpose(blocks, (0, 1, 4, 2, 5, 3))
    return ops.reshape(blocks, (-1, height * sh, width * sw, out_channels))


class _PixelShuffleBase(LipschitzBounded, keras.layers.Layer):
    """pool_size, layout checks and config shared by the two permutations."""

    def __init__(self, pool_size: int | tuple[int, int], data_format: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.pool_size = int_pair(pool_size, "pool_size")
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def lipschitz_sv(self):
        """(min, max) singular values of the layer: a permutation, so (1, 1)."""
        return 1.0, 1.0

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0  # a permutation of the entries

    def vanilla_export(self):
        """Plain layers computing the same function: a fresh copy of this parameter-free layer."""
        return [self.__class__.from_config(self.get_config())]

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class InvertibleDownSampling(_PixelShuffleBase):
    """Space-to-depth with PixelUnshuffle channel order: (N, H, W, C) -> (N, H/s_h, W/s_w, C s_h s_w).

    Output channel c * s_h * s_w + i * s_w + j is input channel c at offset
    (i, j) of each block. A permutation: norm-preserving, exactly 1-Lipschitz.

    Args:
        pool_size: block size, an int or a pair of ints >= 1; must divide the
            input height and width.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> InvertibleDownSampling(2)(keras.ops.ones((1, 8, 8, 3))).shape
        (1, 4, 4, 12)
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        for size, block, axis in zip(input_shape[1:3], self.pool_size, ("height", "width")):
            if size is not None and size % block:
                raise ValueError(
                    f"pool_size {self.pool_size} must divide the input height and width: input shape "
                    f"{tuple(input_shape)} has {axis} {size}."
                )
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        return pixel_unshuffle(inputs, self.pool_size)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        (sh, sw), (batch, height, width, channels) = self.pool_size, input_shape
        return (
            batch,
            None if height is None else height // sh,
            None if width is None else width // sw,
            None if channels is None else channels * sh * sw,
        )


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class InvertibleUpSampling(_PixelShuffleBase):
    """Depth-to-space, the exact inverse of `InvertibleDownSampling`: (N, H, W, C s_h s_w) -> (N, H s_h, W s_w, C).

    A permutation: norm-preserving, exactly 1-Lipschitz.

    Args:
        pool_size: block size, an int or a pair of ints >= 1; s_h * s_w must
            divide the number of input channels.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> InvertibleUpSampling(2)(keras.ops.ones((1, 4, 4, 12))).shape
        (1, 8, 8, 3)
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels, block_area = input_shape[-1], self.pool_size[0] * self.pool_size[1]
        if channels is None or channels % block_area:
            raise ValueError(
                f"pool_size {self.pool_size}: the number of input channels must be a known multiple of "
                f"{block_area} (= pool_size[0] * pool_size[1]); input shape {tuple(input_shape)}."
            )
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        return pixel_shuffle(inputs, self.pool_size)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        (sh, sw), (batch, height, width, channels) = self.pool_size, input_shape
        return (
            batch,
            None if height is None else height * sh,
            None if width is None else width * sw,
            None if channels is None else channels // (sh * sw),
        )


def _spatial_sizes(inputs, height, width):
    """Static height and width when known, else the dynamic ones (inputs of unknown spatial size)."""
    if height is None or width is None:
        dynamic = ops.shape(inputs)
        height = dynamic[1] if height is None else height
        width = dynamic[2] if width is None else width
    return height, width
