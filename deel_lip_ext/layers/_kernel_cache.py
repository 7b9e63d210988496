"""The inference cache of a `ParametrizedLayer`: derived state, never a weight (see `deel_lip_ext.layers.base`)."""

from __future__ import annotations

import keras

__all__ = ["KernelCache"]


class KernelCache:
    """The inference cache of a `ParametrizedLayer`: derived state, never a weight.

    Holds the last constrained kernel, a snapshot of every variable it was
    computed from and a validity flag. The variables are made by hand (not
    `add_weight`) so that Keras does not list them in `weights`, hence not in
    `get_weights()` nor in `.keras` / `.weights.h5` files; the layer lists
    them in `variables` so that every backend treats them as state.

    Args:
        kernel_shape: shape of the constrained kernel.
        dependencies: the variables the kernel is a function of.
    """

    def __init__(self, kernel_shape: tuple, dependencies: list) -> None:
        def variable(name, shape, dtype):
            return keras.Variable(
                keras.initializers.Zeros(), shape=shape, dtype=dtype, trainable=False, autocast=False, name=name
            )

        self.kernel = variable("cached_kernel", kernel_shape, "float32")
        self.snapshots = [variable(f"snapshot_{i}", v.shape, v.dtype) for i, v in enumerate(dependencies)]
        self.valid = variable("cache_valid", (), "float32")

    @property
    def variables(self) -> list:
        return [self.kernel, *self.snapshots, self.valid]

    def invalidate(self) -> None:
        """Make the next inference call recompute the kernel."""
        self.valid.assign(0.0)
