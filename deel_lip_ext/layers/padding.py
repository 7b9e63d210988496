"""`CircularPadding2D` and `Padding2D`: the parameter-free padding layers of exported convolutions.

The padding itself is a pure function (`deel_lip_ext.parametrizations.padding`:
`circular_pad`, `mode_pad`, re-exported here). Circular padding copies pixels,
so on its own it is *not* 1-Lipschitz; it is the circular convolution as a
whole (pad + valid conv) that the library certifies. `Padding2D` adds the
other modes of `PadConv2D` ("constant", "reflect", "symmetric"), with the same
caveat: reflect and symmetric padding copy pixels too.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_channels_last, int_pair, is_int
from deel_lip_ext.layers.base import LipschitzBounded
from deel_lip_ext.parametrizations.padding import (
    PAD_MODES,
    check_mode,
    check_mode_pad_fits,
    check_pad_fits,
    circular_pad,
    mode_pad,
)
from deel_lip_ext.spectrum import pad_index

__all__ = [
    "CircularPadding2D",
    "Padding2D",
    "PAD_MODES",
    "circular_pad",
    "mode_pad",
    "normalize_padding_2d",
]


def normalize_padding_2d(padding: int | tuple) -> tuple[tuple[int, int], tuple[int, int]]:
    """`padding` as `((top, bottom), (left, right))`.

    Args:
        padding: an int (all four sides), a pair `(pad_h, pad_w)` (symmetric), or
            `((top, bottom), (left, right))`; every value an int >= 0 (`ValueError` otherwise).

    Returns:
        `((top, bottom), (left, right))`, ints.
    """
    if is_int(padding) or (
        isinstance(padding, (tuple, list)) and len(padding) == 2 and all(is_int(p) for p in padding)
    ):
        pad_h, pad_w = int_pair(padding, "padding", minimum=0)
        return ((pad_h, pad_h), (pad_w, pad_w))
    if isinstance(padding, (tuple, list)) and len(padding) == 2:
        try:
            return tuple(int_pair(side, "padding", minimum=0) for side in padding)
        except ValueError:
            pass
    raise ValueError(
        "padding must be an int >= 0, a pair (pad_h, pad_w) or ((top, bottom), (left, right)) "
        f"of ints >= 0, got {padding!r}."
    )


def _padded_shape(input_shape, padding):
    """(N, H + top + bottom, W + left + right, C) of a padded channels-last batch shape."""
    sizes = [
        None if size is None else size + before + after for size, (before, after) in zip(input_shape[1:3], padding)
    ]
    return (input_shape[0], *sizes, input_shape[3])


def _copies_constant(padding, input_shape, mode):
    """L2 constant of a copying padding: sqrt of the largest number of copies of one pixel.

    Each pad copies an entry at most once per side (circular and symmetric: pad <= size, reflect:
    pad < size), so an entry has at most 1 + [before > 0] + [after > 0] copies per axis at any size;
    at a known size, the exact counts of the padded index map.
    """
    sizes = (None, None) if input_shape is None else tuple(input_shape)[1:3]
    copies = 1
    for size, (before, after) in zip(sizes, padding):
        if size is None:
            copies *= 1 + (before > 0) + (after > 0)
        else:
            copies *= int(np.bincount(pad_index(size, before, after, mode), minlength=size).max())
    return math.sqrt(copies)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CircularPadding2D(LipschitzBounded, keras.layers.Layer):
    """Wrap-around padding of the spatial axes (a torus), channels-last.

    Used in front of a "valid" convolution to make it circular; the exported
    model of a circular `SpectralConv2D` is this layer followed by a plain
    `Conv2D`. It only copies pixels, so it takes no `k_coef_lip` (on its own
    it is not 1-Lipschitz: the Lipschitz object is the circular convolution).

    Args:
        padding: an int (all sides), a pair `(pad_h, pad_w)` (symmetric) or
            `((top, bottom), (left, right))`; each pad must be <= the size of
            its axis.
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> layer = CircularPadding2D(((1, 1), (0, 2)))
        >>> layer(keras.ops.ones((1, 4, 4, 3))).shape
        (1, 6, 6, 3)
    """

    def __init__(
        self,
        padding: int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = 1,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.padding = normalize_padding_2d(padding)
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        check_pad_fits(self.padding, input_shape[1:3])
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        return circular_pad(inputs, self.padding)

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0 if norm == "linf" else _copies_constant(self.padding, input_shape, "circular")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return _padded_shape(input_shape, self.padding)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"padding": self.padding, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Padding2D(LipschitzBounded, keras.layers.Layer):
    """Zero, reflect or symmetric padding of the spatial axes, channels-last.

    The parameter-free padding of an exported `PadConv2D`: the exported model
    is this layer followed by a plain "valid" `Conv2D` (which
    `deel_lip_ext.utils.model_lipschitz_bound` bounds as one padded
    convolution). Reflect and symmetric padding copy pixels, so on their own
    they are not 1-Lipschitz: the L2 constant is the square root of the
    largest number of copies of one pixel (1 for zeros), the l_inf constant 1;
    no `k_coef_lip`.

    Args:
        padding: an int (all sides), a pair `(pad_h, pad_w)` (symmetric) or
            `((top, bottom), (left, right))`.
        mode: "constant" (zeros), "reflect" (each pad < the size of its axis)
            or "symmetric" (each pad <= the size of its axis).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> layer = Padding2D(1, mode="reflect")
        >>> layer(keras.ops.ones((1, 4, 4, 3))).shape
        (1, 6, 6, 3)
    """

    def __init__(
        self,
        padding: int | tuple[int, int] | tuple[tuple[int, int], tuple[int, int]] = 1,
        mode: str = "reflect",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.padding = normalize_padding_2d(padding)
        self.mode = check_mode(mode)
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        check_mode_pad_fits(self.padding, input_shape[1:3], self.mode)
        super().build(input_shape)

    def call(self, inputs):
        return mode_pad(inputs, self.padding, self.mode)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return _padded_shape(input_shape, self.padding)

    def _lipschitz_constant(self, norm, input_shape):
        if norm == "linf" or self.mode == "constant":
            return 1.0
        return _copies_constant(self.padding, input_shape, self.mode)

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding, "mode": self.mode, "data_format": self.data_format})
        return config
