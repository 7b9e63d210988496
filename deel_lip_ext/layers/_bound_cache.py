"""Bounds of a layer kept per (norm, input shape, config) while its weights stay the same.

An exact layer bound is an SVD or an FFT of the constrained kernel: repeated `certify` /
`model_lipschitz_bound` calls on an unchanged model recompute the same numbers. The cache keeps a
copy of every weight with each bound and serves it only while all of them are equal to the copy, so
a training step, `set_weights`, `load_weights` or an `assign` by hand always gives a fresh bound.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

__all__ = ["BoundCache"]


class BoundCache:
    """Bounds of one layer per (norm, input shape, config), each valid while the layer's weights are unchanged.

    Examples:
        >>> cache = BoundCache()
        >>> cache.get_or_compute(layer, "l2", (None, 4), lambda: 1.0)  # computes; a second call reads
    """

    def __init__(self) -> None:
        self._entries = {}

    def get_or_compute(
        self, layer: keras.layers.Layer, norm: str, input_shape: tuple | None, compute: Callable[[], float]
    ) -> float:
        """The cached bound for (norm, input_shape) if the weights and config are unchanged, else `compute()`.

        Args:
            layer: the layer the bound is of (its `weights` and `get_config()` are the key).
            norm: the norm of the bound.
            input_shape: the input shape of the bound (None: the built one).
            compute: () -> the bound, called when nothing valid is cached.
        """
        try:
            key = (norm, input_shape, repr(sorted(layer.get_config().items())))
        except NotImplementedError:  # a user layer without a config: nothing to key the bound on
            return compute()
        weights = [np.array(keras.ops.convert_to_numpy(weight)) for weight in layer.weights]
        cached = self._entries.get(key)
        if cached is not None and _same_arrays(cached[0], weights):
            return cached[1]
        bound = compute()
        self._entries[key] = (weights, bound)
        return bound


def _same_arrays(first: list, second: list) -> bool:
    """Same number of arrays, each of the same shape, dtype and values (NaN never equal: recompute)."""
    return len(first) == len(second) and all(
        a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(first, second)
    )
