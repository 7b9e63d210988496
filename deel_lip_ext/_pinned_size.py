"""Input-size pinning of layers whose Lipschitz constant depends on the spatial size: the one backend-specific check.

A layer built for a known height and width (its bound, or its normalization,
holds at that size only) refuses other sizes. Static shapes are checked in
Python on every backend. JAX (under `jit` too) and torch trace with concrete
shapes, so that check sees every size that runs. TensorFlow can trace with
unknown dimensions (`tf.function(reduce_retracing=True)`, a `tf.data` pipeline
of varying sizes): there the check is also an assertion in the graph, which
fails at run time with `tf.errors.InvalidArgumentError` carrying the same
message.
"""

from __future__ import annotations

from typing import Any

import keras

from deel_lip_ext._optional import tensorflow

__all__ = ["check_spatial_size", "assert_spatial_size"]


def check_spatial_size(input_shape: tuple, pinned: tuple, message: str) -> None:
    """Raise `ValueError(message)` if a known size of `input_shape[1:1 + len(pinned)]` differs from `pinned`.

    Args:
        input_shape: a shape with the batch dimension first (entries may be None).
        pinned: the required spatial sizes (None: free).
        message: the error message (it names the layer and the fix).
    """
    for size, required in zip(tuple(input_shape)[1:], pinned):
        if required is not None and size is not None and int(size) != int(required):
            raise ValueError(message)


def assert_spatial_size(inputs: Any, pinned: tuple, message: str) -> Any:
    """`inputs`, checked to have the spatial sizes `pinned` (None: free) now and, on TensorFlow, at run time.

    The static check raises `ValueError(message)`. When TensorFlow traces with
    an unknown pinned dimension, the returned tensor depends on an assertion
    that raises `tf.errors.InvalidArgumentError(message)` when it runs on
    another size.
    """
    shape = tuple(inputs.shape)
    check_spatial_size(shape, pinned, message)
    unknown = [axis for axis, required in enumerate(pinned, 1) if required is not None and shape[axis] is None]
    if not unknown or keras.backend.backend() != "tensorflow":
        return inputs
    tf = tensorflow("assert_spatial_size")
    dynamic = tf.shape(inputs)
    checks = [tf.debugging.assert_equal(dynamic[axis], int(pinned[axis - 1]), message=message) for axis in unknown]
    with tf.control_dependencies(checks):
        return tf.identity(inputs)
