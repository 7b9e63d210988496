"""How often a convolution reads each input entry: the correction factor of the RKO convolutions.

A convolution whose reshaped kernel matrix M has ||M||_2 <= 1 satisfies

    ||conv(pad(x))||^2 = sum_o ||M^T patch_o(pad(x))||^2 <= sum_o ||patch_o(pad(x))||^2
                       = sum_i count_i x_i^2 <= (max_i count_i) ||x||^2,

where count_i is the number of (output window, kernel tap) pairs that read
input entry i, padding copies included. Multiplying the kernel by
1 / sqrt(max count) makes the convolution 1-Lipschitz. Zero padding reads each
entry at most ceil(k/s) times per axis whatever the input size; reflect,
symmetric and circular padding copy border entries, so their count depends
on the size. Plain numpy: these are build-time constants.
"""

from __future__ import annotations

import math

import numpy as np

from deel_lip_ext.spectrum import padded_axis_counts

__all__ = [
    "ZERO_PADDINGS",
    "pad_widths",
    "axis_overlap_counts",
    "overlap_counts",
    "conv_lipschitz_coefficient",
    "max_overlap",
]

ZERO_PADDINGS = ("same", "valid", "constant")


def pad_widths(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(before, after) pads of one axis: TensorFlow's for "same", none for "valid", (k//2, k-1-k//2) otherwise.

    Args:
        size: input length of the axis.
        kernel: kernel length.
        stride: stride.
        padding: "same", "valid", or a padding mode ("constant", "reflect", "symmetric", "circular").

    Returns:
        `(before, after)`, ints >= 0.

    Examples:
        >>> pad_widths(8, 3, 1, "reflect")
        (1, 1)
    """
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        n_out = -(-size // stride)
        total = max((n_out - 1) * stride + kernel - size, 0)
        return (total // 2, total - total // 2)
    return (kernel // 2, kernel - 1 - kernel // 2)


def axis_overlap_counts(size: int, kernel: int, stride: int, padding: str) -> np.ndarray:
    """For each input index of one axis: how many (output window, kernel tap) pairs read it, padding copies included.

    Args:
        size: input length.
        kernel: kernel length.
        stride: stride.
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".

    Returns:
        A numpy int array of length `size`.

    Examples:
        >>> axis_overlap_counts(4, 3, 1, "reflect")  # array([2, 4, 4, 2]) (edge copies counted)
    """
    mode = "constant" if padding in ZERO_PADDINGS else padding
    return padded_axis_counts(size, kernel, stride, pad_widths(size, kernel, stride, padding), mode)


def overlap_counts(size: int | None, kernel: int, stride: int, padding: str) -> np.ndarray | None:
    """`axis_overlap_counts` of a "same", "valid" or "circular" convolution axis, or None when `size` is None.

    Args:
        size: input length of the axis, or None (unknown).
        kernel: kernel length.
        stride: stride.
        padding: as in `axis_overlap_counts`.

    Examples:
        >>> overlap_counts(5, 3, 2, "same")  # array([1, 1, 2, 1, 1])
    """
    return None if size is None else axis_overlap_counts(size, kernel, stride, padding)


def conv_lipschitz_coefficient(
    input_size: tuple[int | None, ...], kernel_size: tuple[int, ...], strides: tuple[int, ...], padding: str
) -> float:
    """1/sqrt(max overlap): makes a conv with a spectrally normalized reshaped kernel 1-Lipschitz.

    Exact (for this bound) at the given input size; when a spatial size is
    unknown, uses ceil(k/s), the maximum over all sizes for zero/valid padding.

    Args:
        input_size: spatial input sizes, one per axis (None: unknown).
        kernel_size: kernel lengths, one per axis.
        strides: strides, one per axis.
        padding: as in `axis_overlap_counts`.

    Returns:
        The coefficient, a float in ]0, 1].

    Examples:
        >>> conv_lipschitz_coefficient((28, 28), (3, 3), (1, 1), "same")  # 1/3
    """
    worst = 1
    for size, kernel, stride in zip(input_size, kernel_size, strides):
        counts = overlap_counts(size, kernel, stride, padding)
        worst *= int(counts.max()) if counts is not None and counts.size else math.ceil(kernel / stride)
    return 1.0 / math.sqrt(max(worst, 1))


def max_overlap(
    sizes: tuple[int | None, ...], kernel_size: tuple[int, ...], strides: tuple[int, ...], padding: str
) -> int:
    """Max over input entries of the overlap count (product over the axes of the per-axis maxima).

    Zero paddings use ceil(k/s) per axis, a bound valid for every input size;
    the copying paddings need every size (ValueError otherwise).

    Args:
        sizes: spatial input sizes, one per axis (None: unknown, zero paddings only).
        kernel_size: kernel lengths, one per axis.
        strides: strides, one per axis.
        padding: "same", "valid", "constant", "reflect", "symmetric" or "circular".

    Examples:
        >>> max_overlap((8, 8), (3, 3), (1, 1), "circular")
        9
    """
    worst = 1
    for size, kernel, stride in zip(sizes, kernel_size, strides):
        if padding in ZERO_PADDINGS:
            worst *= math.ceil(kernel / stride)
        elif size is None:
            raise ValueError(f"padding={padding!r} needs known spatial dimensions, got sizes {tuple(sizes)}.")
        else:
            worst *= int(axis_overlap_counts(size, kernel, stride, padding).max())
    return max(worst, 1)
