"""`Conv2D` -> `GroupSort2` -> `Conv2D` as one layer whose sort costs no pass of its own.

A plain network's ReLU runs inside its convolution (oneDNN fuses it); an exported GroupSort2 is
a pass of its own over the convolution's output, which is what keeps an export above the plain
network. Between two linear layers the sort splits into a linear part and a ReLU:
with pairs (u, v), min(u, v) = u - relu(u - v) and max(u, v) = v + relu(u - v), so for a
`GroupSort2` (pairs (2i, 2i + 1) -> (min, max), times k) between convolutions A and B,

    B(k GroupSort2(A x)) = (k B o A) x + (k (B_odd - B_even)) relu(A_even x - A_odd x),

where `B o A` is the composition of the two convolutions, itself one convolution of size
k1 + k2 - 1 from the first one's input channels, and B_even, B_odd are B's input channels
of the minima and the maxima. The ReLU runs inside its convolution, which computes half of
A's channels; B runs on half of its input channels, adding the composed convolution's output
in the same kernel. Where A has few input channels (a network's first convolution: 3 for RGB)
the composition costs less than B, and the whole costs fewer multiply-adds than the two layers.
On a 2-core CPU (TensorFlow, oneDNN; batch 256, 32 x 32 x 3 -> 64 -> 64, 3 x 3 kernels) the
two convolutions and the sort took 101 ms, plain convolutions with ReLU 96 ms, this form 80 ms
(before the border correction below).

With "same" padding B pads A's output with zeros, which the composed convolution does not
see: it also adds B's taps over A's output just outside the image. `_border_excess` gives that
excess on the output's border from thin convolutions of the image's edges. Subtracting it is a
pass over the output of its own (as costly as the sort's: 10-20 ms on W2's first block), so
`vanilla_export` folds a chain only where a `GroupSort2L2NormPooling2D` follows: the pooling's
computation then pools the uncorrected output and recomputes its border rows and columns from
corrected strips (`_pooled_with_fixed_border`): on W2 the export then ran at 1.03x plain (median of
18 timings on a 2-core CPU) instead of 1.075x.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._xla import compiled_by_xla
from deel_lip_ext.layers.activations import FullSort, GroupSort, GroupSort2
from deel_lip_ext.layers.base import LipschitzBounded, check_k_coef_lip
from deel_lip_ext.layers.fused import (
    GroupSort2L2NormPooling2D,
    call_shapes,
    is_plain_conv,
    sorted_halves_l2_norm_pooled_math,
    sorted_pairs_l2_norm_pooled_math,
)
from deel_lip_ext.lipschitz import stock_layer_lipschitz

__all__ = [
    "FOLDED_DTYPES",
    "ConvGroupSort2Conv2D",
    "composed_conv_kernel",
    "folded_sorts_between_convs",
    "is_pairwise_sort",
]

# The fold pays where its multiply-adds are at most this fraction of the two convolutions' (the border
# correction adds a pass over the output). W2's first two convolutions (3 -> 64 -> 64, 3 x 3): 0.62.
_MAX_COST_RATIO = 0.75
FOLDED_DTYPES = ("float32", "float64")  # the dtypes the folds run in (rounding of float16 is not modelled)


def composed_conv_kernel(first: ArrayLike, second: ArrayLike) -> Any:
    """The kernel of the convolution `second o first` (both cross-correlations, stride 1, no padding).

    Args:
        first: kernel (k1h, k1w, Cin, C).
        second: kernel (k2h, k2w, C, Cout).

    Returns:
        The kernel (k1h + k2h - 1, k1w + k2w - 1, Cin, Cout), entry m being the sum over s + q = m of
        first[s] @ second[q]: a "valid" convolution with it is the two "valid" convolutions in a row.

    Examples:
        >>> composed_conv_kernel(np.ones((3, 3, 1, 2)), np.ones((3, 3, 2, 1))).shape  # (5, 5, 1, 1)
    """
    (k2h, k2w) = second.shape[:2]
    # Each input channel of `first` as an image (batch Cin), convolved (flipped kernel) with `second`.
    images = ops.pad(ops.transpose(first, (2, 0, 1, 3)), ((0, 0), (k2h - 1, k2h - 1), (k2w - 1, k2w - 1), (0, 0)))
    composed = ops.conv(images, ops.flip(ops.flip(second, 0), 1), padding="valid")
    return ops.transpose(composed, (1, 2, 0, 3))


def _padded_conv(values, pads, kernel):
    """A "valid" convolution of `values` zero-padded by `pads` ((top, bottom), (left, right))."""
    return ops.conv(ops.pad(values, ((0, 0), *pads, (0, 0))), kernel, padding="valid")


def _border_excess(inputs, first_kernel, first_bias, second_kernel):
    """What the composed convolution of a "same" pair adds on the output's border: [(piece, (row, column))].

    The composed convolution reads the first one's output (bias included) on a band of half the
    second kernel's size around the image, where the second convolution reads zeros; the excess is
    the second one's taps over that band. Each piece is to be subtracted at its place in the output.
    With a second kernel of height and width 3 each edge's excess is one thin convolution of the
    image's edge with a composed kernel (the corners, counted by two edges, are added back once);
    otherwise the first convolution gives the band and the second one's taps the excess. Thin
    convolutions, which TensorFlow runs with oneDNN (XLA's CPU convolutions are several times slower).
    """
    (k1h, k1w), (k2h, k2w) = first_kernel.shape[:2], second_kernel.shape[:2]
    (w1h, w1w), (w2h, w2w) = (k1h // 2, k1w // 2), (k2h // 2, k2w // 2)
    height, width = inputs.shape[1], inputs.shape[2]
    last_row, last_column = height - w1h, width - w1w  # the edges the first convolution reads beyond the image
    top, bottom, left, right = inputs[:, :w1h], inputs[:, last_row:], inputs[:, :, :w1w], inputs[:, :, last_column:]
    wide, tall = (w1w + w2w, w1w + w2w), (w1h + w2h, w1h + w2h)
    if (w2h, w2w) == (1, 1):

        def excess(edge, pads, taps):  # the band (one row or column) and the taps over it, composed
            bias = ops.matmul(first_bias, ops.sum(taps, axis=(0, 1)))
            return _padded_conv(edge, pads, composed_conv_kernel(first_kernel, taps)) + bias

        pieces = [
            (excess(top, ((w1h + 1, 0), wide), second_kernel[:1]), (0, 0)),
            (excess(bottom, ((0, w1h + 1), wide), second_kernel[2:]), (height - 1, 0)),
            (excess(left, (tall, (w1w + 1, 0)), second_kernel[:, :1]), (0, 0)),
            (excess(right, (tall, (0, w1w + 1)), second_kernel[:, 2:]), (0, width - 1)),
        ]
        # Each corner's band entry is read by a row and by a column of the excess above: added back once.
        row_ends = ((slice(0, w1h), 0, (w1h + 1, 0), 0), (slice(last_row, None), 2, (0, w1h + 1), height - 1))
        column_ends = ((slice(0, w1w), 0, (w1w + 1, 0), 0), (slice(last_column, None), 2, (0, w1w + 1), width - 1))
        for rows, tap_row, pad_rows, row in row_ends:
            for columns, tap_column, pad_columns, column in column_ends:
                taps = second_kernel[tap_row : tap_row + 1, tap_column : tap_column + 1]
                corner = excess(inputs[:, rows, columns], (pad_rows, pad_columns), taps)
                pieces.append((-corner, (row, column)))
        return pieces

    def band(edge, pads):  # the first convolution (with its bias) on a zero-padded edge of the image
        return _padded_conv(edge, pads, first_kernel) + first_bias

    rows = (w2h, w2h)  # the left and right bands stop at the image's rows: the top and bottom ones take the corners
    top_taps, bottom_taps = second_kernel[:w2h], second_kernel[k2h - w2h :]
    left_taps, right_taps = second_kernel[:, :w2w], second_kernel[:, k2w - w2w :]
    return [
        (_padded_conv(band(top, ((w1h + w2h, 0), wide)), ((0, w2h - 1), (0, 0)), top_taps), (0, 0)),
        (_padded_conv(band(bottom, ((0, w1h + w2h), wide)), ((w2h - 1, 0), (0, 0)), bottom_taps), (height - w2h, 0)),
        (_padded_conv(band(left, ((w1h, w1h), (w1w + w2w, 0))), (rows, (0, w2w - 1)), left_taps), (0, 0)),
        (_padded_conv(band(right, ((w1h, w1h), (0, w1w + w2w))), (rows, (w2w - 1, 0)), right_taps), (0, width - w2w)),
    ]


def _cropped_into(shape, origin, piece, place):
    """The part of `piece` (placed at `place` of the output) inside the region of `shape` at `origin`, zero-padded
    to `shape`; None where they do not meet."""
    (height, width), (rows, columns) = shape[1:3], piece.shape[1:3]
    top, left = place[0] - origin[0], place[1] - origin[1]
    first_row, first_column = max(0, -top), max(0, -left)
    stop_row, stop_column = min(rows, height - top), min(columns, width - left)
    if first_row >= stop_row or first_column >= stop_column:
        return None
    piece = piece[:, first_row:stop_row, first_column:stop_column]
    top, left = top + first_row, left + first_column
    pads = ((top, height - top - (stop_row - first_row)), (left, width - left - (stop_column - first_column)))
    return ops.pad(piece, ((0, 0), *pads, (0, 0)))


def _minus_pieces(region, origin, pieces, places):
    """`region` (at `origin` of the output) less every piece of the border excess that reaches it."""
    for piece, place in zip(pieces, places):
        cropped = _cropped_into(region.shape, origin, piece, place)
        region = region if cropped is None else region - cropped
    return region


def _minus_border(places, outputs, *pieces):
    """`outputs` less the border excess (`_border_excess`'s pieces at `places`): one pass, XLA on TensorFlow."""
    return _minus_pieces(outputs, (0, 0), pieces, places)


_minus_border_compiled = compiled_by_xla(_minus_border)


def _pooled_with_fixed_border(places, pooled_math, pool_size, constants, outputs, *pieces):
    """`pooled_math(_minus_border(places, outputs, *pieces), pool_size, *constants)` without that tensor: the
    pooling of `outputs` as it is, its border rows and columns replaced by the pooling of corrected strips of
    `outputs` (one window high or wide). One XLA computation on TensorFlow (concatenations, which TensorFlow
    differentiates, where an in-place update would not be)."""
    (ph, pw), (height, width) = pool_size, outputs.shape[1:3]

    def fixed(strip, origin):  # the pooling of a strip of `outputs` at `origin`, less the excess reaching it
        return pooled_math(_minus_pieces(strip, origin, pieces, places), pool_size, *constants)

    pooled = pooled_math(outputs, pool_size, *constants)
    top, bottom = fixed(outputs[:, :ph], (0, 0)), fixed(outputs[:, height - ph :], (height - ph, 0))
    pooled = ops.concatenate([top, pooled[:, 1:-1], bottom], axis=1)
    left, right = fixed(outputs[:, :, :pw], (0, 0)), fixed(outputs[:, :, width - pw :], (0, width - pw))
    return ops.concatenate([left, pooled[:, :, 1:-1], right], axis=2)


_pooled_with_fixed_border_compiled = compiled_by_xla(_pooled_with_fixed_border)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ConvGroupSort2Conv2D(LipschitzBounded, keras.layers.Layer):
    """`Conv2D`, `GroupSort2(k_coef_lip=sort_k_coef_lip)`, `Conv2D` (and a pooling) in a row, without the sort's pass.

    `vanilla_export` puts it where such a chain, followed by a `GroupSort2L2NormPooling2D`, costs
    fewer multiply-adds this way (`folded_sorts_between_convs`): the composed convolution
    `second o first` plus `second`'s difference of the maxima's and minima's taps applied to the
    ReLU of `first`'s difference of each pair's channels (see the module's docstring). The same
    values as the layers in a row, to float rounding; the weights are the two convolutions' own.
    Lipschitz constant: `sort_k_coef_lip` times the exact constants of the two convolutions at
    their input sizes (times the pooling's), as for the layers in a row.

    Args:
        first: config of the first `Conv2D` (as `get_config` gives it): stride 1, dilation 1, groups 1,
            channels_last, no activation, an even number of filters.
        second: config of the second `Conv2D`, the same conditions and the same padding as `first`
            ("valid", or "same" with odd kernel sizes >= 3).
        sort_k_coef_lip: the `k_coef_lip` of the GroupSort2 between them (> 0).
        pooling: None, or the config of a `GroupSort2L2NormPooling2D` applied to the second convolution's
            output (`window_layout="spatial"`). With "same" padding the border correction then runs inside
            the pooling's computation instead of a pass of its own; the output size must be a multiple of
            the window, at least two windows, and the window at least half the second kernel.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> first = {"filters": 4, "kernel_size": 3, "padding": "same"}
        >>> layer = ConvGroupSort2Conv2D(first, {**first, "filters": 2})
        >>> layer(np.ones((1, 8, 8, 3), "float32")).shape  # (1, 8, 8, 2)
    """

    def __init__(
        self, first: dict, second: dict, sort_k_coef_lip: float = 1.0, pooling: dict | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.first = keras.layers.Conv2D.from_config({**first, "name": first.get("name", "first")})
        self.second = keras.layers.Conv2D.from_config({**second, "name": second.get("name", "second")})
        self.sort_k_coef_lip = check_k_coef_lip(sort_k_coef_lip)
        self.pooling = None if pooling is None else GroupSort2L2NormPooling2D.from_config(pooling)
        _check_foldable(self.first, self.second, self.pooling, self.name)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.first.build(input_shape)
        middle_shape = self.first.compute_output_shape(input_shape)
        self.second.build(middle_shape)
        convolved_shape = self.second.compute_output_shape(middle_shape)
        if self.first.padding == "same":
            sizes, kernel = tuple(input_shape[1:3]), tuple(self.first.kernel_size)
            if None in sizes or any(size < k for size, k in zip(sizes, kernel)):
                raise ValueError(
                    f"layer {self.name!r}: with 'same' padding the input size must be known and at least the first "
                    f"kernel {kernel}, got {sizes}; use the layers in a row for other inputs."
                )
        if self.pooling is not None:
            _check_pooled_size(convolved_shape, self.second, self.pooling, self.name)
            self.pooling.build(convolved_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = self.second.compute_output_shape(self.first.compute_output_shape(input_shape))
        return shape if self.pooling is None else self.pooling.compute_output_shape(shape)

    def _weights(self, dtype):
        first_kernel = ops.cast(self.first.kernel, dtype)
        second_kernel = ops.cast(self.second.kernel, dtype) * ops.cast(self.sort_k_coef_lip, dtype)
        first_bias, second_bias = (
            ops.cast(conv.bias, dtype) if conv.use_bias else ops.zeros((conv.filters,), dtype)
            for conv in (self.first, self.second)
        )
        return first_kernel, first_bias, second_kernel, second_bias

    def call(self, inputs: ArrayLike):
        first_kernel, first_bias, second_kernel, second_bias = self._weights(inputs.dtype)
        padding = self.first.padding
        minima, maxima = slice(0, None, 2), slice(1, None, 2)  # GroupSort2's pairs: (2i, 2i + 1) -> (min, max)
        composed = ops.conv(inputs, composed_conv_kernel(first_kernel, second_kernel), padding=padding)
        spreads = ops.relu(
            ops.conv(inputs, first_kernel[..., minima] - first_kernel[..., maxima], padding=padding)
            + (first_bias[minima] - first_bias[maxima])
        )
        # bias: B's taps summed over A's bias, and B's own (exact inside; the border is corrected below)
        bias = ops.matmul(first_bias, ops.sum(second_kernel, axis=(0, 1))) + second_bias
        taps = second_kernel[:, :, maxima] - second_kernel[:, :, minima]
        outputs = ops.conv(spreads, taps, padding=padding) + bias + composed
        if padding == "valid":
            return outputs if self.pooling is None else self.pooling(outputs)
        pieces, places = zip(*_border_excess(inputs, first_kernel, first_bias, second_kernel))
        if self.pooling is None:
            return _minus_border_compiled(places, outputs, *pieces)
        pooling = self.pooling
        pooled_math = (
            sorted_halves_l2_norm_pooled_math if pooling.pair_layout == "halves" else sorted_pairs_l2_norm_pooled_math
        )
        constants = (*pooling._mean_square_constants(), pooling.sort_k_coef_lip)
        return _pooled_with_fixed_border_compiled(places, pooled_math, pooling.pool_size, constants, outputs, *pieces)

    def _lipschitz_constant(self, norm, input_shape):
        # GroupSort2 is sort_k-Lipschitz in every l_p norm; the two convolutions at their real input sizes.
        middle_shape = None if input_shape is None else tuple(self.first.compute_output_shape(input_shape))
        bound = (
            stock_layer_lipschitz(self.first, norm, input_shape)
            * self.sort_k_coef_lip
            * stock_layer_lipschitz(self.second, norm, middle_shape)
        )
        if self.pooling is None:
            return bound
        convolved_shape = None if middle_shape is None else tuple(self.second.compute_output_shape(middle_shape))
        return bound * self.pooling.lipschitz_constant(norm, convolved_shape)

    def _rounded_constants(self):
        return 0 if self.pooling is None else self.pooling._rounded_constants()

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            first=self.first.get_config(),
            second=self.second.get_config(),
            sort_k_coef_lip=self.sort_k_coef_lip,
            pooling=None if self.pooling is None else self.pooling.get_config(),
        )
        return config


def _check_foldable(first, second, pooling, name):
    """Refuse a pair of `Conv2D` configurations (and a pooling) that `ConvGroupSort2Conv2D` does not compute."""
    for role, conv in (("first", first), ("second", second)):
        plain = (
            tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1)
            and conv.groups == 1
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
        )
        if not plain:
            raise ValueError(
                f"layer {name!r}: {role!r} must be a Conv2D with strides 1, dilation 1, groups 1, channels_last "
                "and no activation; keep other convolutions as separate layers."
            )
        same_ok = all(size % 2 == 1 and size >= 3 for size in conv.kernel_size)
        if conv.padding not in ("valid", "same") or (conv.padding == "same" and not same_ok):
            raise ValueError(
                f"layer {name!r}: {role!r} has padding {conv.padding!r} and kernel size {conv.kernel_size}; "
                'supported are "valid", and "same" with odd kernel sizes >= 3.'
            )
    if first.padding != second.padding:
        raise ValueError(
            f"layer {name!r}: 'first' and 'second' need the same padding, got {first.padding!r} and {second.padding!r}."
        )
    if first.filters % 2:
        raise ValueError(
            f"layer {name!r}: 'first' needs an even number of filters (GroupSort2's pairs), got {first.filters}."
        )
    if pooling is not None and pooling.window_layout != "spatial":
        raise ValueError(f"layer {name!r}: 'pooling' needs window_layout='spatial', got {pooling.window_layout!r}.")


def _check_pooled_size(shape, second, pooling, name):
    """Refuse an output size (N, H, W, C) whose border the pooled correction of a "same" pair does not cover."""
    if second.padding == "valid":
        return
    sizes, windows, bands = tuple(shape[1:3]), pooling.pool_size, tuple(size // 2 for size in second.kernel_size)
    if None in sizes or any(
        size % window or size < 2 * window or band > window for size, window, band in zip(sizes, windows, bands)
    ):
        raise ValueError(
            f"layer {name!r}: with 'same' padding and a pooling, the output size {sizes} must be known, a multiple "
            f"of the window {windows} and at least two windows, and the window at least {bands} (half the second "
            "kernel); pass pooling=None and apply the pooling as a layer of its own."
        )


def _fold_cost_ratio(first, second, input_channels):
    """Multiply-adds per output pixel of the folded form over those of the two convolutions."""
    (k1h, k1w), (k2h, k2w) = first.kernel_size, second.kernel_size
    middle, out = first.filters, second.filters
    folded = (k1h + k2h - 1) * (k1w + k2w - 1) * input_channels * out
    folded += k1h * k1w * input_channels * middle // 2 + k2h * k2w * middle // 2 * out
    return folded / (k1h * k1w * input_channels * middle + k2h * k2w * middle * out)


def is_pairwise_sort(sort: keras.layers.Layer, channels: int) -> bool:
    """Whether `sort` is a GroupSort2 on `channels` channels (a `GroupSort` or `FullSort` whose groups are pairs).

    Args:
        sort: any layer; only `GroupSort`, `GroupSort2` and `FullSort` (exact classes) can qualify.
        channels: the number of channels `sort` is called on.

    Examples:
        >>> is_pairwise_sort(FullSort(), 2), is_pairwise_sort(GroupSort(4), 8)  # (True, False)
    """
    if type(sort) not in (GroupSort, GroupSort2, FullSort):
        return False
    return (channels if sort.n is None or sort.n > channels else sort.n) == 2


def _folds(chain, input_shape, pooled_shape):
    """Whether `folded_sorts_between_convs` rewrites `chain` (conv, sort, conv, pooling) called on `input_shape`."""
    first, sort, second, pooling = chain
    if not (is_plain_conv(first) and is_plain_conv(second)):
        return False
    if type(pooling) is not GroupSort2L2NormPooling2D or pooling.window_layout != "spatial":
        return False
    if not is_pairwise_sort(sort, first.filters) or input_shape is None or None in tuple(input_shape)[1:]:
        return False
    if any(keras.backend.standardize_dtype(conv.compute_dtype) not in FOLDED_DTYPES for conv in (first, second)):
        return False
    try:
        _check_foldable(first, second, pooling, "")
        _check_pooled_size(pooled_shape, second, pooling, "")
    except ValueError:
        return False
    too_small = any(size < k1 + k2 for size, k1, k2 in zip(input_shape[1:3], first.kernel_size, second.kernel_size))
    return not too_small and _fold_cost_ratio(first, second, input_shape[-1]) <= _MAX_COST_RATIO


def folded_sorts_between_convs(
    layers: list[keras.layers.Layer], input_shape: tuple | None = None
) -> list[keras.layers.Layer]:
    """Rewrite exported layers called in a row: `Conv2D`, GroupSort2, `Conv2D`, fused pooling become one layer.

    A chain qualifies when both convolutions are stock, stride 1, dilation 1, without activation,
    with the same padding ("valid", or "same" with odd kernels >= 3), in float32 or float64, the sort
    is a pairwise sort (`GroupSort2`, or `GroupSort` / `FullSort` of group size 2), a
    `GroupSort2L2NormPooling2D` with spatial windows follows (for "same": on an output size that is a
    multiple of its window, see `ConvGroupSort2Conv2D`), the input size is known and at least the two
    kernels' sizes summed, and the folded form costs at most 3/4 of the multiply-adds of the two
    convolutions (`_MAX_COST_RATIO`: few input channels, such as a network's first convolution).
    The four layers become three `keras.layers.Identity` named as the first three, then a
    `ConvGroupSort2Conv2D` named as the pooling, with the two convolutions' weights: the list keeps
    its length and the network computes the same function.

    Args:
        layers: built layers, in call order, each reading the output of the one before alone.
        input_shape: the shape the first layer is called on (batch dimension first); None: unknown,
            and nothing is rewritten.

    Returns:
        A new list with each qualifying chain replaced (the layers given are not changed).

    Examples:
        >>> chain = [conv, GroupSort2(), conv_2, GroupSort2L2NormPooling2D()]
        >>> [type(layer).__name__ for layer in folded_sorts_between_convs(chain, (None, 32, 32, 3))]
        ['Identity', 'Identity', 'Identity', 'ConvGroupSort2Conv2D']
    """
    rewritten, shapes = list(layers), call_shapes(layers, input_shape)
    index = 0
    while index + 3 < len(rewritten):
        chain = rewritten[index : index + 4]
        if not _folds(chain, shapes[index], shapes[index + 3]):
            index += 1
            continue
        first, sort, second, pooling = chain
        folded = ConvGroupSort2Conv2D(
            first.get_config(),
            second.get_config(),
            sort.k_coef_lip,
            pooling.get_config(),
            name=pooling.name,
            dtype=second.dtype_policy,
        )
        folded.build(shapes[index])
        folded.first.set_weights(first.get_weights())
        folded.second.set_weights(second.get_weights())
        rewritten[index : index + 4] = [keras.layers.Identity(name=layer.name) for layer in chain[:3]] + [folded]
        index += 4
    return rewritten
