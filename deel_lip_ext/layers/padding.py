"""Circular (wrap-around) and mode padding, and the argument checks shared by the parameter-free layers.

Keras's `ops.pad` has no circular mode on the TensorFlow backend, so the
padding is built from slices and `ops.concatenate`: the last `top` rows are
put before the image and the first `bottom` rows after it, then the same on
the width axis. With it, a "valid" convolution computes a circular
convolution, whose singular values are given exactly by the FFT of its
kernel (see `deel_lip_ext.layers.convolutional`).

Circular padding copies pixels, so on its own it is *not* 1-Lipschitz; it is
the circular convolution as a whole (pad + valid conv) that the library
certifies. `Padding2D` adds the other modes of `PadConv2D` ("constant",
"reflect", "symmetric"), with the same caveat: reflect and symmetric padding
copy pixels too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.base import LipschitzBounded
from deel_lip_ext.spectrum import pad_index

__all__ = [
    "CircularPadding2D",
    "Padding2D",
    "PAD_MODES",
    "circular_pad",
    "mode_pad",
    "check_channels_last",
    "int_pair",
    "normalize_padding_2d",
]

# Modes of `Padding2D` / `mode_pad` (`keras.ops.pad` names); "circular" is `CircularPadding2D`.
PAD_MODES = ("constant", "reflect", "symmetric")


def check_channels_last(data_format: str):
    """Return "channels_last", or raise `ValueError`: every layer of the library is channels-last.

    `None` means Keras's global `image_data_format()`.
    """
    resolved = keras.config.image_data_format() if data_format is None else data_format
    if resolved != "channels_last":
        raise ValueError(
            f"data_format must be 'channels_last' (or None with a channels-last global setting), "
            f"got {data_format!r} (resolved to {resolved!r}); deel-lip-ext layers are channels-last only."
        )
    return "channels_last"


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_pair(value: int | Sequence[int], name: str, minimum: int = 1):
    """`value` (an int or a pair of ints, each >= `minimum`) as a tuple `(height, width)`."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(_is_int(v) and v >= minimum for v in pair)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of such ints, got {value!r}.")
    return tuple(int(v) for v in pair)


def normalize_padding_2d(padding: str):
    """`padding` as `((top, bottom), (left, right))`.

    Accepts an int (all four sides), a pair `(pad_h, pad_w)` (symmetric), or
    `((top, bottom), (left, right))`.
    """
    if _is_int(padding) or (
        isinstance(padding, (tuple, list)) and len(padding) == 2 and all(_is_int(p) for p in padding)
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


def _check_pad_fits(padding, spatial_size):
    """Wrap-around can only copy pixels that exist: each pad must be <= the size of its axis."""
    for (before, after), size, axis in zip(padding, spatial_size, ("height", "width")):
        if size is not None and max(before, after) > size:
            raise ValueError(
                f"padding {padding!r} is larger than the input {axis} {size}: circular padding "
                f"needs each pad <= the size of its axis."
            )


def _wrap_axis(x, before, after, axis):
    """Concatenate the last `before` and the first `after` slices of `axis` around `x`."""

    def along_axis(start, stop):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    # Zero pads are skipped: x[-0:] would be the whole axis, not an empty slice.
    pieces = ([along_axis(-before, None)] if before else []) + [x] + ([along_axis(0, after)] if after else [])
    return ops.concatenate(pieces, axis=axis) if len(pieces) > 1 else x


def circular_pad(x: ArrayLike, padding: tuple[tuple[int, int], tuple[int, int]]) -> Any:
    """Wrap-around pad of a channels-last batch `x` (N, H, W, C).

    Args:
        x: a rank-4 tensor.
        padding: `((top, bottom), (left, right))`, each pad <= the size of its axis.

    Returns:
        The padded tensor, (N, H + top + bottom, W + left + right, C).

    Examples:
        >>> circular_pad(x, ((1, 1), (0, 2)))
    """
    (top, bottom), (left, right) = padding
    _check_pad_fits(padding, x.shape[1:3])
    return _wrap_axis(_wrap_axis(x, top, bottom, axis=1), left, right, axis=2)


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
        data_format: str = "channels_last",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.padding = normalize_padding_2d(padding)
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _check_pad_fits(self.padding, input_shape[1:3])
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        return circular_pad(inputs, self.padding)

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0 if norm == "linf" else _copies_constant(self.padding, input_shape, "circular")

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        sizes = [
            None if size is None else size + before + after
            for size, (before, after) in zip(input_shape[1:3], self.padding)
        ]
        return (input_shape[0], *sizes, input_shape[3])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"padding": self.padding, "data_format": self.data_format})
        return config


def _check_mode(mode):
    if mode not in PAD_MODES:
        raise ValueError(
            f"mode must be one of {PAD_MODES} (use CircularPadding2D for wrap-around padding), got {mode!r}."
        )
    return mode


def _check_mode_pad_fits(padding, spatial_size, mode):
    """Reflect copies pixels strictly inside the axis (pad < size), symmetric includes the edge (pad <= size)."""
    for (before, after), size, axis in zip(padding, spatial_size, ("height", "width")):
        if size is None or mode == "constant":
            continue
        limit = size - 1 if mode == "reflect" else size
        if max(before, after) > limit:
            raise ValueError(
                f"padding {padding!r} is too large for {mode} padding of an input {axis} of {size}: "
                f"each pad must be <= {limit}."
            )


def mode_pad(x, padding, mode):
    """Pad the spatial axes of a channels-last batch `x` (N, H, W, C) with zeros, a reflection or a mirror.

    Args:
        x: a rank-4 tensor.
        padding: `((top, bottom), (left, right))`.
        mode: "constant" (zeros), "reflect" (mirror without the edge pixel,
            pad < size) or "symmetric" (mirror with the edge pixel, pad <= size).

    Returns:
        The padded tensor, (N, H + top + bottom, W + left + right, C).

    Examples:
        >>> mode_pad(x, ((1, 1), (2, 2)), "reflect")
    """
    _check_mode(mode)
    _check_mode_pad_fits(padding, x.shape[1:3], mode)
    return ops.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)), mode=mode)


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
        data_format: str = "channels_last",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.padding = normalize_padding_2d(padding)
        self.mode = _check_mode(mode)
        self.data_format = check_channels_last(data_format)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        _check_mode_pad_fits(self.padding, input_shape[1:3], self.mode)
        super().build(input_shape)

    def call(self, inputs):
        return mode_pad(inputs, self.padding, self.mode)

    def compute_output_shape(self, input_shape):
        sizes = [
            None if size is None else size + before + after
            for size, (before, after) in zip(input_shape[1:3], self.padding)
        ]
        return (input_shape[0], *sizes, input_shape[3])

    def _lipschitz_constant(self, norm, input_shape):
        if norm == "linf" or self.mode == "constant":
            return 1.0
        return _copies_constant(self.padding, input_shape, self.mode)

    def get_config(self):
        config = super().get_config()
        config.update({"padding": self.padding, "mode": self.mode, "data_format": self.data_format})
        return config
