"""A memory-bound convolution, GroupSort2 and L2-norm pooling over parts of the batch: their tensors stay in cache.

A convolution with few multiply-adds per output entry (the first layer of an MNIST network: a 3 x 3
kernel over one channel, 9) spends its time writing its output, and the sort + pooling after it
(`sorted_then_l2_norm_pooled`) reads and writes that tensor again each way: W1's first block,
(256, 28, 28, 16) float32, 12.8 MB, is several times the cache of a core. Run over four parts of 64
samples (3.2 MB each), every tensor of the block is read back while still in cache, and only the
pooled output (a quarter of the size) is put back together. The values and gradients are those of the
whole batch at once (the same per-sample ops; the kernel's gradient sums four parts), the kernel and
its parametrization are computed once (`one_kernel`), and each part goes through the layers' own
calls. Measured on a 2-core EPYC with TensorFlow (`benchmarks/train_step_versions.py`, paired rounds),
W1's training step is 0.2 to 1.1 ms (1-4 %) faster; in 2 parts it ran as in 4, in 8 parts 0.5 to 1.0
ms slower than in 4. W1's second block (144 multiply-adds per output entry) gained nothing in parts;
W2's convolutions (27 to 1152) in 16 parts ran 25 ms (3 %) slower per step, its first block in 8
parts within the noise. On JAX and torch W1's step times were unchanged within their noise (-4 to
+2 ms on steps of 80 to 130 ms).

`Sequential.call` asks `batch_chunks` for each convolution followed by a fused sort + pooling.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.base import ParametrizedLayer
from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.layers.fused import sorted_then_l2_norm_pooled

__all__ = ["CHUNK_BYTES", "MAX_MULTIPLY_ADDS_PER_OUTPUT", "batch_chunks", "chunked_conv_sort_pool", "one_kernel"]

# A part's convolution output at least this large (and the parts as many as that allows, a power of 2):
# W1's first block in 4 parts of 3.2 MB measured faster than in 2 (6.4 MB) or 8 (1.6 MB).
CHUNK_BYTES = 3 * 2**20
# Convolutions with more multiply-adds per output entry are not limited by memory: W1's second one (144)
# and W2's (576) gained nothing in parts.
MAX_MULTIPLY_ADDS_PER_OUTPUT = 32


def batch_chunks(conv: keras.layers.Layer, inputs: ArrayLike) -> int:
    """In how many equal parts of its batch `conv`, followed by a fused sort + pooling, runs `inputs` (1: whole).

    More than 1 only for a library convolution (`LipschitzConv`, its own `call`, not transposed) with at
    most `MAX_MULTIPLY_ADDS_PER_OUTPUT` multiply-adds per output entry, called on inputs of a known batch
    size in its compute dtype, whose output is at least two parts of `CHUNK_BYTES`.

    Args:
        conv: the layer before the sort.
        inputs: the tensor `conv` is called on, (N, H, W, C).

    Returns:
        A power of 2 that divides the batch size.

    Examples:
        >>> conv = SpectralConv2D(16, 3, padding="same"); conv.build((None, 28, 28, 1))
        >>> batch_chunks(conv, keras.ops.zeros((256, 28, 28, 1)))  # 4: 12.8 MB of output, 9 multiply-adds per entry
    """
    if not isinstance(conv, LipschitzConv) or type(conv).call is not LipschitzConv.call or not conv.built:
        return 1
    batch = inputs.shape[0]
    if conv.transposed or batch is None or keras.backend.standardize_dtype(inputs.dtype) != conv.compute_dtype:
        return 1
    if math.prod(conv.kernel_shape()[:-1]) > MAX_MULTIPLY_ADDS_PER_OUTPUT:
        return 1
    output_shape = conv.compute_output_shape(tuple(inputs.shape))
    output_bytes = math.prod(output_shape) * _itemsize(conv.compute_dtype)
    chunks = 1
    while output_bytes >= 2 * chunks * CHUNK_BYTES and batch % (2 * chunks) == 0:
        chunks *= 2
    return chunks


def _itemsize(dtype):
    name = keras.backend.standardize_dtype(dtype)
    return 2 if name == "bfloat16" else np.dtype(name).itemsize  # numpy has no bfloat16


@contextlib.contextmanager
def one_kernel(layer: ParametrizedLayer, training: bool | None) -> Iterator[None]:
    """Within the block, every call of `layer` multiplies by one kernel, computed (and its state stored) once.

    Args:
        layer: a built `ParametrizedLayer`.
        training: the calls' `training` flag (a training kernel carries its gradient and stores the state).

    Examples:
        >>> with one_kernel(conv, training=True):
        ...     parts = [conv(part, training=True) for part in keras.ops.split(x, 4)]
    """
    layer._shared_kernel = layer.kernel_for_call(training)
    try:
        yield
    finally:
        layer._shared_kernel = None


def chunked_conv_sort_pool(
    inputs: ArrayLike,
    conv: ParametrizedLayer,
    sort: keras.layers.Layer,
    pooling: keras.layers.Layer,
    chunks: int,
    training: bool | None = None,
) -> Any:
    """`pooling(sort(conv(inputs)))` computed on `chunks` equal parts of the batch, put back together.

    Args:
        inputs: (N, H, W, C) tensor, N divisible by `chunks`.
        conv: the convolution (`batch_chunks(conv, inputs)` > 1).
        sort: the `GroupSort2` after it, `fusable` with `pooling`.
        pooling: the `ScaledL2NormPooling2D` after the sort.
        chunks: number of parts (`batch_chunks`).
        training: the call's `training` flag.

    Returns:
        The pooling's output for the whole batch.

    Examples:
        >>> y = chunked_conv_sort_pool(x, conv, GroupSort2(), ScaledL2NormPooling2D((2, 2)), 4, training=True)
    """
    with one_kernel(conv, training):
        parts = [
            sorted_then_l2_norm_pooled(conv(part, training=training), sort, pooling)
            for part in ops.split(inputs, chunks, axis=0)
        ]
    return ops.concatenate(parts, axis=0)
