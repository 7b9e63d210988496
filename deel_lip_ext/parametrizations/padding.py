"""Circular (wrap-around) and mode padding of channels-last batches, as pure `keras.ops` functions.

Keras's `ops.pad` has no circular mode on the TensorFlow backend, and its torch
"symmetric" mode is edge replication, so circular and mirror padding are built
from slices and `ops.concatenate`: for circular padding the last `top` rows are
put before the image and the first `bottom` rows after it, then the same on
the width axis. With it, a "valid" convolution computes a circular
convolution, whose singular values are given exactly by the FFT of its
kernel (`deel_lip_ext.spectrum.conv_singular_values`). The layers
`CircularPadding2D` and `Padding2D` (`deel_lip_ext.layers.padding`) apply them.
"""

from __future__ import annotations

from typing import Any

from keras import ops
from numpy.typing import ArrayLike

__all__ = ["PAD_MODES", "circular_pad", "mode_pad", "check_pad_fits", "check_mode", "check_mode_pad_fits"]

# Modes of `mode_pad` (`keras.ops.pad` names); "circular" is `circular_pad`.
PAD_MODES = ("constant", "reflect", "symmetric")


def check_pad_fits(padding: tuple, spatial_size: tuple) -> None:
    """Wrap-around can only copy pixels that exist: each pad must be <= the size of its axis.

    Args:
        padding: `((top, bottom), (left, right))` pad widths.
        spatial_size: `(height, width)` of the input; None for an unknown size (not checked).

    Raises:
        ValueError: a pad larger than its axis.
    """
    for (before, after), size, axis in zip(padding, spatial_size, ("height", "width")):
        if size is not None and max(before, after) > size:
            raise ValueError(
                f"padding {padding!r} is larger than the input {axis} {size}: circular padding "
                f"needs each pad <= the size of its axis."
            )


def check_mode(mode: str) -> str:
    """`mode` if it is one of `PAD_MODES`, else `ValueError` (with the way to circular padding).

    Args:
        mode: the padding mode to check.
    """
    if mode not in PAD_MODES:
        raise ValueError(
            f"mode must be one of {PAD_MODES} (use CircularPadding2D for wrap-around padding), got {mode!r}."
        )
    return mode


def check_mode_pad_fits(padding: tuple, spatial_size: tuple, mode: str) -> None:
    """Reflect copies pixels strictly inside the axis (pad < size), symmetric includes the edge (pad <= size).

    Args:
        padding: `((top, bottom), (left, right))` pad widths.
        spatial_size: `(height, width)` of the input; None for an unknown size (not checked).
        mode: one of `PAD_MODES` ("constant" pads any width).

    Raises:
        ValueError: a pad too large for `mode`.
    """
    for (before, after), size, axis in zip(padding, spatial_size, ("height", "width")):
        if size is None or mode == "constant":
            continue
        limit = size - 1 if mode == "reflect" else size
        if max(before, after) > limit:
            raise ValueError(
                f"padding {padding!r} is too large for {mode} padding of an input {axis} of {size}: "
                f"each pad must be <= {limit}."
            )


def _along_axis(x, start, stop, axis):
    """`x[..., start:stop, ...]` on `axis`."""
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _wrap_axis(x, before, after, axis):
    """Concatenate the last `before` and the first `after` slices of `axis` around `x`."""

    def along_axis(start, stop):
        return _along_axis(x, start, stop, axis)

    # Zero pads are skipped: x[-0:] would be the whole axis, not an empty slice.
    pieces = ([along_axis(-before, None)] if before else []) + [x] + ([along_axis(0, after)] if after else [])
    return ops.concatenate(pieces, axis=axis) if len(pieces) > 1 else x


def _mirror_axis(x, before, after, axis, include_edge):
    """Mirror `before` entries of `axis` before `x` and `after` after it (symmetric: edge included)."""
    skip = 0 if include_edge else 1
    pieces = [x]
    if before:
        pieces.insert(0, ops.flip(_along_axis(x, skip, skip + before, axis), axis=axis))
    if after:
        # Negative bounds: the size of the axis may be unknown when a model is built.
        pieces.append(ops.flip(_along_axis(x, -after - skip, -skip or None, axis), axis=axis))
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
    check_pad_fits(padding, x.shape[1:3])
    return _wrap_axis(_wrap_axis(x, top, bottom, axis=1), left, right, axis=2)


def mode_pad(x: ArrayLike, padding: tuple[tuple[int, int], tuple[int, int]], mode: str) -> Any:
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
    check_mode(mode)
    check_mode_pad_fits(padding, x.shape[1:3], mode)
    if mode == "constant":
        return ops.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    # Mirrors are built from slices, not `ops.pad`: Keras's torch backend turns "symmetric" into
    # torch's "replicate" (another function for pads >= 2, whose norm the certificate does not bound).
    include_edge = mode == "symmetric"
    x = _mirror_axis(x, *padding[0], axis=1, include_edge=include_edge)
    return _mirror_axis(x, *padding[1], axis=2, include_edge=include_edge)
