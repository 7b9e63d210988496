"""`GroupSort2` followed by `ScaledL2NormPooling2D`, in one pass: what `vanilla_export` makes of the two.

A plain network pays nothing for its ReLU: oneDNN runs it inside the convolution. A separate
activation costs one more pass over the convolution's output (read and write), and the pooling
another read: on a 2-core CPU, (256, 28, 28, 16) float32, GroupSort2 2.4 ms and L2-norm pooling
1.9 ms where max pooling takes 1.4 ms. Sorting each pair while reading a pooling window makes
the two one pass (1.7 ms), so an exported Lipschitz network costs about what the plain one costs.
The values are those of the two layers in a row (the sort only permutes entries).

Where the pairs lie matters as much as the fusion: XLA's CPU code for adjacent pairs
(channels 2i, 2i + 1) shuffles within each vector, while pairs in two halves of the channels
(channels i, i + C/2) are two contiguous slices, compared lane by lane. `pairs_as_halves` rewrites
exported layers called in a row (a Sequential's, or a chain of a functional export whose outputs
nothing else reads) so that every fused layer between a `Conv2D` and a `Conv2D` (or a
`Flatten` + `Dense`) reads its pairs as halves: the producer's output channels and the consumer's
input channels are permuted to match, which is free and exact. Measured on a 2-core CPU, the
W1 export (two such poolings) ran at 1.10-1.15x the plain model instead of 1.39-1.51x.

The windows themselves can lie in the channels too: `windows_as_channels` rewrites a one-channel
`Conv2D` (stride 1) that feeds a fused pooling into the equivalent convolution with stride
`pool_size`, whose output channel p * C + c holds entry p of the window of channel c. The pooling
then reads each window as contiguous memory (`window_layout="channels"`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_choice
from deel_lip_ext._xla import compiled_by_xla
from deel_lip_ext.layers.activations import FullSort, GroupSort, GroupSort2, _sorted_pairs_math, _sorted_pairs_vjp
from deel_lip_ext.layers.base import check_k_coef_lip
from deel_lip_ext.layers.padding import CircularPadding2D, Padding2D
from deel_lip_ext.layers.pooling import DEFAULT_EPS_GRAD_SQRT, ScaledL2NormPooling2D, _smooth_norm

__all__ = [
    "GroupSort2L2NormPooling2D",
    "PAIR_LAYOUTS",
    "WINDOW_LAYOUTS",
    "fusable",
    "fused",
    "pairs_as_halves",
    "sorted_then_l2_norm_pooled",
    "windows_as_channels",
]

PAIR_LAYOUTS = ("adjacent", "halves")
WINDOW_LAYOUTS = ("spatial", "channels")


def _windows(inputs, pool_size):
    """(N, H, W, C) -> (N, H // ph, ph, W // pw, pw, C): the disjoint windows (a remainder is dropped, as "valid")."""
    (ph, pw), (height, width, channels) = pool_size, inputs.shape[1:]
    rows, columns = height // ph, width // pw
    if (rows * ph, columns * pw) != (height, width):
        inputs = inputs[:, : rows * ph, : columns * pw, :]
    return ops.reshape(inputs, (-1, rows, ph, columns, pw, channels))


def sorted_pairs_l2_norm_pooled_math(inputs, pool_size, eps, scale, sort_scale):
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


def sorted_halves_l2_norm_pooled_math(inputs, pool_size, eps, scale, sort_scale):
    """As `sorted_pairs_l2_norm_pooled_math` for pairs (i, i + C/2): output [pooled minima, pooled maxima]."""
    windows, (ph, pw) = _windows(inputs, pool_size), pool_size
    _, rows, _, columns, _, channels = windows.shape
    # The halves as an axis of their own, minima and maxima stacked on it (not sliced from, nor
    # concatenated along, the channels): XLA's CPU code then chooses between the two once per row of
    # C/2 entries, and the loop along the row vectorizes. Measured on a 2-core CPU against slices and
    # a concatenation, alternated: (256, 16, 16, 128) 3.5-3.9 ms instead of 4.4-5.1 ms; (256, 32, 32, 64),
    # (256, 28, 28, 16) and (256, 14, 14, 32) within 3 % of it.
    windows = ops.reshape(windows, (-1, rows, ph, columns, pw, 2, channels // 2))
    square_minima = square_maxima = None
    for i in range(ph):
        for j in range(pw):
            first, second = windows[:, :, i, :, j, 0], windows[:, :, i, :, j, 1]  # entry (i, j) of every window
            low, high = ops.square(ops.minimum(first, second)), ops.square(ops.maximum(first, second))
            square_minima = low if square_minima is None else square_minima + low
            square_maxima = high if square_maxima is None else square_maxima + high
    mean_square = ops.stack([square_minima, square_maxima], axis=-2)
    factor = sort_scale * sort_scale / (ph * pw)
    pooled = _smooth_norm(mean_square * ops.convert_to_tensor(factor, mean_square.dtype), eps, scale)
    return ops.reshape(pooled, (-1, rows, columns, channels))


def _sorted_windows_in_channels_l2_norm_pooled_math(inputs, area, pair_layout, eps, scale, sort_scale):
    """As `sorted_pairs_l2_norm_pooled_math` for windows laid out in the channels: (..., area * C) -> (..., C).

    Input channel p * C + c is entry p of the window of output channel c; the pairs of c are in
    `pair_layout`, and so is the output.
    """
    channels = inputs.shape[-1] // area
    if pair_layout == "halves":
        pairs = ops.reshape(inputs, (-1, area, 2, channels // 2))
        first, second, sorted_axis = pairs[:, :, 0, :], pairs[:, :, 1, :], 1
    else:
        pairs = ops.reshape(inputs, (-1, area, channels // 2, 2))
        first, second, sorted_axis = pairs[..., 0], pairs[..., 1], -1
    square_minima = ops.sum(ops.square(ops.minimum(first, second)), axis=1)
    square_maxima = ops.sum(ops.square(ops.maximum(first, second)), axis=1)
    mean_square = ops.reshape(ops.stack([square_minima, square_maxima], axis=sorted_axis), (-1, channels))
    factor = ops.convert_to_tensor(sort_scale * sort_scale / area, mean_square.dtype)
    pooled = _smooth_norm(mean_square * factor, eps, scale)
    return ops.reshape(pooled, (*ops.shape(inputs)[:-1], channels))


_sorted_pairs_l2_norm_pooled = compiled_by_xla(sorted_pairs_l2_norm_pooled_math)
_sorted_halves_l2_norm_pooled = compiled_by_xla(sorted_halves_l2_norm_pooled_math)
_sorted_windows_in_channels_l2_norm_pooled = compiled_by_xla(_sorted_windows_in_channels_l2_norm_pooled_math)


def _squared_sorted_pairs_math(pairs, k_coef_lip, factor, offset):
    """(N, 2) -> factor (k min, k max)^2 + offset of each row: GroupSort2's output, squared in the same pass."""
    return ops.square(_sorted_pairs_math(pairs, k_coef_lip)) * factor + offset


def _squared_sorted_pairs_vjp(upstream, pairs, k_coef_lip, factor, offset):
    # d (factor (k P x)^2) = 2 factor (k P x) * k P dx: GroupSort2's own gradient (a permutation, ties
    # included) of 2 factor y g.
    return _sorted_pairs_vjp(2.0 * factor * _sorted_pairs_math(pairs, k_coef_lip) * upstream, pairs, k_coef_lip)


_squared_sorted_pairs = compiled_by_xla(_squared_sorted_pairs_math, vjp=_squared_sorted_pairs_vjp)


def sorted_then_l2_norm_pooled(inputs: ArrayLike, sort: GroupSort, pooling: ScaledL2NormPooling2D) -> Any:
    """`pooling(sort(inputs))` for a `fusable` pair, with the sort and the square in one pass each way.

    The values are the two layers' (to float rounding), and so is the gradient: GroupSort2's
    permutation Jacobian, ties included, then the pooling's; it can be differentiated again
    (tulip's gradient penalty). The pooling's scale and smoothing go into the squaring pass
    (outside float16, whose range they would narrow), k (sqrt(m + eps^2) - eps) =
    sqrt(k^2 m + (k eps)^2) - k eps with m the window mean, which leaves a square root and a
    subtraction after oneDNN's average pooling. What it saves on TensorFlow is the pass that
    squares the sorted tensor, two passes of the pooling's arithmetic and their gradients: the
    W1 train step went from 1.41-1.49x to 1.26-1.28x a plain model's (2-core CPU, calls
    alternated). The Lipschitz `Sequential` calls it in place of the two layers.

    Args:
        inputs: (N, H, W, C) tensor, C even, in the layers' compute dtype.
        sort: a built `GroupSort2` (or `GroupSort` with groups of 2).
        pooling: the `ScaledL2NormPooling2D` that reads the sort's output.

    Returns:
        The pooling's output, (N, H // ph, W // pw, C).

    Examples:
        >>> sort, pooling = GroupSort2(), ScaledL2NormPooling2D((2, 2))
        >>> x = keras.random.normal((1, 4, 4, 2))
        >>> y = sorted_then_l2_norm_pooled(x, sort, pooling)  # pooling(sort(x)), shape (1, 2, 2, 2)
    """
    eps, scale = pooling._mean_square_constants()
    # float16 ends at 65504: squares scaled first would overflow at entries `scale` times smaller than
    # the two layers' do, so there the scale and the smoothing stay after the pooling.
    folded = keras.backend.standardize_dtype(inputs.dtype) != "float16"
    factor, offset = (scale * scale, (scale * eps) ** 2) if folded else (1.0, 0.0)
    squares = _squared_sorted_pairs(ops.reshape(inputs, (-1, 2)), sort.k_coef_lip, factor, offset)
    pool_size = pooling.pool_size
    mean_square = ops.average_pool(ops.reshape(squares, ops.shape(inputs)), pool_size, pool_size, padding="valid")
    if not folded:
        return _smooth_norm(mean_square, eps, scale)
    root = ops.sqrt(mean_square)
    return root - ops.convert_to_tensor(scale * eps, root.dtype) if eps else root


def _halves_order(channels):
    """Adjacent-pair channel of each halves-layout channel: [0, 2, 4, ..., 1, 3, 5, ...]."""
    return np.concatenate([np.arange(0, channels, 2), np.arange(1, channels, 2)])


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort2L2NormPooling2D(ScaledL2NormPooling2D):
    """`GroupSort2(k_coef_lip=sort_k_coef_lip)` then `ScaledL2NormPooling2D`, in one pass over the input.

    `vanilla_export` puts it where a `GroupSort2` feeds only a `ScaledL2NormPooling2D`:
    the same values as the two layers (to float rounding), about the cost of the
    pooling alone. Lipschitz constant: `sort_k_coef_lip * k_coef_lip` (L2), times
    sqrt(area) in l_inf, as the two layers in a row.

    With `pair_layout="halves"` the pairs are channels (i, i + C/2) and the output
    holds the pooled minima in its first half, the pooled maxima in its second: the
    two layers' function up to a fixed permutation of the channels on each side
    (the export permutes the neighbouring kernels to match; see `pairs_as_halves`).

    With `window_layout="channels"` each window lies in the channels of one input
    pixel: an input (N, H, W, ph * pw * C) gives an output (N, H, W, C), input
    channel p * C + c holding entry p (row-major in the window) of the window of
    output channel c. `windows_as_channels` makes the convolution before the
    layer write that layout.

    Args:
        pool_size: int or pair of ints >= 1, the window (and stride).
        strides: None or equal to `pool_size`.
        padding: "valid" only.
        k_coef_lip: Lipschitz constant of the pooling.
        eps_grad_sqrt: smoothing of the square root at 0, >= 0 (see `ScaledL2NormPooling2D`).
        sort_k_coef_lip: Lipschitz constant of the GroupSort2 (its outputs are multiplied by it).
        pair_layout: "adjacent" (GroupSort2's pairs: channels 2i and 2i + 1, output in the same
            places) or "halves" (pairs: channels i and i + C/2; output [minima, maxima]).
        window_layout: "spatial" (windows of `pool_size` pixels) or "channels" (each window in the
            channels of one pixel, as above).
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
        pair_layout: str = "adjacent",
        window_layout: str = "spatial",
        **kwargs: Any,
    ) -> None:
        super().__init__(pool_size, strides, padding, k_coef_lip, eps_grad_sqrt, data_format, **kwargs)
        self.sort_k_coef_lip = check_k_coef_lip(sort_k_coef_lip)
        self.pair_layout = check_choice(pair_layout, "pair_layout", PAIR_LAYOUTS)
        self.window_layout = check_choice(window_layout, "window_layout", WINDOW_LAYOUTS)
        self._sort = GroupSort2(k_coef_lip=self.sort_k_coef_lip)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if self.window_layout == "channels":
            channels = input_shape[-1]
            if channels is None or channels % self.area:
                raise ValueError(
                    f"layer {self.name!r}: window_layout='channels' needs a channel count divisible by the "
                    f"window area {self.area} (pool_size {self.pool_size}), got {channels}."
                )
            input_shape = (*input_shape[:-1], channels // self.area)
        self._sort.build(input_shape)  # checks the channel count: even, known
        super().build(input_shape)

    def _rounded_constants(self):
        # The pooling's two, and the sort's k.
        return super()._rounded_constants() + (0 if self.sort_k_coef_lip == 1.0 else 1)

    def call(self, inputs: ArrayLike):
        eps, scale = self._mean_square_constants()
        if self.window_layout == "channels":
            return _sorted_windows_in_channels_l2_norm_pooled(
                inputs, self.area, self.pair_layout, eps, scale, self.sort_k_coef_lip
            )
        if None in inputs.shape[1:]:  # sizes known only at run time: the two layers' own paths
            return self._unfused(inputs)
        pooled = _sorted_halves_l2_norm_pooled if self.pair_layout == "halves" else _sorted_pairs_l2_norm_pooled
        return pooled(inputs, self.pool_size, eps, scale, self.sort_k_coef_lip)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if self.window_layout == "spatial":
            return super().compute_output_shape(input_shape)
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else channels // self.area)

    def _unfused(self, inputs):
        if self.pair_layout == "adjacent":
            return super().call(self._sort(inputs))
        order = _halves_order(inputs.shape[-1])  # halves channel j is adjacent channel order[j]
        adjacent = ops.take(inputs, np.argsort(order), axis=-1)
        return ops.take(super().call(self._sort(adjacent)), order, axis=-1)

    def _lipschitz_constant(self, norm, input_shape):
        # GroupSort2 is sort_k-Lipschitz in every l_p norm (a scaled permutation).
        return self.sort_k_coef_lip * super()._lipschitz_constant(norm, input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config["sort_k_coef_lip"] = self.sort_k_coef_lip
        config["pair_layout"] = self.pair_layout
        config["window_layout"] = self.window_layout
        return config


def fusable(layer: keras.layers.Layer, following: keras.layers.Layer) -> bool:
    """Whether `following(layer(x))` is one `GroupSort2L2NormPooling2D`: a built pairwise sort, then L2 pooling.

    Args:
        layer: the first layer: fusable if it is a built `GroupSort`, `GroupSort2` or `FullSort` of group size 2.
        following: the layer applied next: fusable if it is a `ScaledL2NormPooling2D` (exact class).
    """
    return (
        type(layer) in (GroupSort, GroupSort2, FullSort)
        and layer.built
        and layer.group_size == 2
        and type(following) is ScaledL2NormPooling2D
    )


def fused(layer: GroupSort2, following: ScaledL2NormPooling2D) -> GroupSort2L2NormPooling2D:
    """The `GroupSort2L2NormPooling2D` computing `following(layer(x))`, named after `following`.

    Args:
        layer: the pairwise sort (see `fusable`); its `k_coef_lip` becomes the fused layer's `sort_k_coef_lip`.
        following: the `ScaledL2NormPooling2D` after it, whose config the fused layer takes.

    Returns:
        A new, unbuilt `GroupSort2L2NormPooling2D`.
    """
    config = following.get_config()
    config["sort_k_coef_lip"] = layer.k_coef_lip
    return GroupSort2L2NormPooling2D.from_config(config)


def _keeps_channel_order(layer):
    """Whether `layer` acts on each channel alike (a padding), so a permutation of the channels passes through it."""
    if type(layer) is keras.layers.ZeroPadding2D:
        return layer.data_format == "channels_last"
    return isinstance(layer, (CircularPadding2D, Padding2D))


def pairs_as_halves(layers: list[keras.layers.Layer]) -> list[keras.layers.Layer]:
    """Rewrite exported layers called in a row so that fused poolings read pairs as halves.

    A `GroupSort2L2NormPooling2D` qualifies when a stock `Conv2D` feeds it directly and
    its output reaches a stock `Conv2D`, or a `Flatten` then a `Dense`, through
    channel-wise layers only (paddings). The producer's output channels are put
    in the order [0, 2, 4, ..., 1, 3, 5, ...], so that pair (2i, 2i + 1) lies at
    (i, i + C/2); the fused layer becomes `pair_layout="halves"`, whose output is
    in that order too; the consumer's input channels are reordered to match. The
    network computes the same function: only the order of intermediate channels
    changes, folded into the kernels. Other fused layers are left as they are.

    Args:
        layers: built layers, in call order, each reading the output of the one before
            alone (a Sequential's; in a functional export, a chain whose outputs nothing
            else reads); the producer's and consumer's weights are permuted in place.

    Returns:
        The list, with each qualifying fused layer replaced by its "halves" copy.

    Examples:
        >>> layers = pairs_as_halves([conv, fused_pooling, keras.layers.Flatten(), dense])
        >>> layers[1].pair_layout  # "halves"; conv's and dense's kernels permuted to match
    """
    rewritten = list(layers)
    for index, layer in enumerate(rewritten):
        if type(layer) is not GroupSort2L2NormPooling2D or layer.pair_layout != "adjacent" or index == 0:
            continue
        producer, consumer = rewritten[index - 1], _linear_consumer(rewritten[index + 1 :])
        if not (is_plain_conv(producer) and consumer is not None):
            continue
        order = _halves_order(producer.kernel.shape[-1])
        kernel, *bias = producer.get_weights()
        producer.set_weights([kernel[..., order]] + [vector[order] for vector in bias])
        weights = consumer.get_weights()
        if isinstance(consumer, keras.layers.Dense):  # rows of a Flatten of (H, W, C): (h, w) blocks of C
            units = weights[0].shape[-1]
            rows = weights[0].reshape(-1, len(order), units)[:, order, :]
            consumer.set_weights([rows.reshape(-1, units)] + weights[1:])
        else:
            consumer.set_weights([weights[0][:, :, order, :]] + weights[1:])
        rewritten[index] = GroupSort2L2NormPooling2D.from_config({**layer.get_config(), "pair_layout": "halves"})
    return rewritten


def is_plain_conv(layer):
    """Whether `layer` is a built stock `Conv2D` (exact class), channels_last, without groups."""
    return (
        type(layer) is keras.layers.Conv2D
        and layer.built
        and layer.groups == 1
        and layer.data_format == "channels_last"
    )


def _linear_consumer(following):
    """The `Conv2D` or (after a `Flatten`) `Dense` that reads the first of `following` through channel-wise layers."""
    for position, layer in enumerate(following):
        if _keeps_channel_order(layer):
            continue
        if is_plain_conv(layer):
            return layer
        after = following[position + 1 : position + 2]
        flattens = type(layer) is keras.layers.Flatten and layer.data_format == "channels_last"
        if flattens and after and type(after[0]) is keras.layers.Dense and after[0].built:
            return after[0]
        return None
    return None


# The rewritten convolution computes (kh + ph - 1)(kw + pw - 1) / (kh kw) times the multiply-adds of the
# original (16 / 9 for 3 x 3 kernels and 2 x 2 windows) and writes the same bytes; the pooling then reads
# contiguous windows. Measured on a 2-core CPU (TensorFlow, oneDNN; batch 256, 3 x 3 kernels, 2 x 2
# windows, convolution + fused pooling, alternated calls): one input channel and 16 filters (64 channels
# once rewritten) 2.66-3.23 ms -> 2.52-2.91 ms, and W1's whole export 1.12-1.15x -> 1.02-1.04x plain;
# 32 filters 1.25-1.36x slower, 64 filters 1.6x; 3 input channels and 16 filters -4% to +7%, 3 and 64
# 1.8x slower, 16 and 32 1.7x. Hence one input channel and at most 64 channels once rewritten.
_WINDOWS_AS_CHANNELS_MAX_CHANNELS = 64


def windows_as_channels(layers: list[keras.layers.Layer], input_shape: tuple | None = None) -> list[keras.layers.Layer]:
    """Rewrite exported layers called in a row so that fused poolings read windows as channels.

    A `GroupSort2L2NormPooling2D` qualifies when a stock `Conv2D` with one input
    channel, stride 1, dilation 1 and no activation feeds it, its windows times its
    filters are at most 64 channels, and its padding is "valid", or "same" on an
    input size (the size it runs at, from `input_shape`) divisible by the window.
    That convolution becomes the equivalent one with kernel (kh + ph - 1,
    kw + pw - 1) and stride (ph, pw), writing window entry p of filter c to
    channel p * filters + c (the kernel placed at offset p);
    the pooling becomes `window_layout="channels"`. Same function, same padding
    (a "same" convolution of stride ph on a size divisible by ph pads as the
    stride-1 one does); where the windows do not tile the output, the rows and
    columns the pooling drops are not computed.

    Args:
        layers: built layers, in call order, each reading the output of the one before alone.
        input_shape: the shape the first layer is called on (batch dimension first); None: unknown, and
            no "same" convolution is rewritten (a layer's build size may not be the size it runs at).

    Returns:
        A new list with each qualifying pair replaced (the layers given are not changed).

    Examples:
        >>> layers = windows_as_channels([conv, fused_pooling, keras.layers.Flatten(), dense])
        >>> layers[0].strides, layers[1].window_layout  # (2, 2), "channels" for 2 x 2 windows
    """
    rewritten, shapes = list(layers), call_shapes(layers, input_shape)
    for index in range(1, len(rewritten)):
        producer, pooling = rewritten[index - 1], rewritten[index]
        if _writes_windows_cheaply(producer, pooling, shapes[index - 1]):
            rewritten[index - 1] = _windows_in_channels_conv(producer, pooling.pool_size)
            rewritten[index] = GroupSort2L2NormPooling2D.from_config(
                {**pooling.get_config(), "window_layout": "channels"}
            )
    return rewritten


def call_shapes(layers, input_shape):
    """The input shape of each of `layers` called in a row from `input_shape` (None where unknown)."""
    shapes, shape = [], None if input_shape is None else tuple(input_shape)
    for layer in layers:
        shapes.append(shape)
        if isinstance(layer, keras.layers.InputLayer):
            continue  # passes its input on
        try:
            shape = None if shape is None else tuple(layer.compute_output_shape(shape))
        except (AttributeError, NotImplementedError, ValueError, TypeError):  # a keras.ops call: no such method
            shape = None
    return shapes


def _writes_windows_cheaply(producer, pooling, input_shape):
    """Whether `windows_as_channels` rewrites `producer` (a layer called on `input_shape`) feeding `pooling`."""
    if type(pooling) is not GroupSort2L2NormPooling2D or pooling.window_layout != "spatial":
        return False
    if not is_plain_conv(producer) or producer.kernel.shape[2] != 1:
        return False
    if (tuple(producer.strides), tuple(producer.dilation_rate)) != ((1, 1), (1, 1)):
        return False
    if producer.activation is not keras.activations.linear:
        return False
    if producer.filters * pooling.area > _WINDOWS_AS_CHANNELS_MAX_CHANNELS:
        return False
    if producer.padding == "valid":
        return True
    sizes = (None, None) if input_shape is None else tuple(input_shape)[1:3]
    return None not in sizes and all(size % window == 0 for size, window in zip(sizes, pooling.pool_size))


def _windows_in_channels_conv(conv, pool_size):
    """The `Conv2D` of stride `pool_size` writing each window of `conv`'s output to the channels of one pixel."""
    kernel, *bias = conv.get_weights()
    (kh, kw, channels, filters), (ph, pw) = kernel.shape, pool_size
    wide = np.zeros((kh + ph - 1, kw + pw - 1, channels, ph * pw * filters), kernel.dtype)
    for row in range(ph):
        for column in range(pw):
            position = row * pw + column
            wide[row : row + kh, column : column + kw, :, position * filters : (position + 1) * filters] = kernel
    config = conv.get_config()
    config.update(filters=ph * pw * filters, kernel_size=wide.shape[:2], strides=(ph, pw))
    rewritten = keras.layers.Conv2D.from_config(config)
    rewritten.build((None, None, None, channels))
    rewritten.set_weights([wide] + [np.tile(vector, ph * pw) for vector in bias])
    return rewritten
