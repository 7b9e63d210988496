"""The inference cache of a `ParametrizedLayer`: derived state, never a weight (see `deel_lip_ext.layers.base`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext._loops import branches_may_write_variables, eager_jax_flag

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

    def read_or_refresh(self, dependencies: list, compute: Callable[[], Any]) -> Any:
        """The cached kernel, or `compute()` stored in the cache when any dependency differs from its snapshot.

        Args:
            dependencies: the variables the kernel is a function of (in the order of `snapshots`).
            compute: () -> the fresh kernel, gradient stopped.

        Examples:
            >>> kernel = layer._kernel_cache.read_or_refresh(layer.kernel_dependencies(), fresh_kernel)
        """
        stale = self.valid < 0.5
        for variable, snapshot in zip(dependencies, self.snapshots):
            stale = ops.logical_or(stale, ops.any(ops.not_equal(variable, snapshot)))
        if branches_may_write_variables():
            # Write only when stale: a fresh cache costs the comparisons alone.
            def refresh():
                return self._store(compute(), dependencies, copy=False)

            return ops.cond(stale, refresh, lambda: ops.copy(self.kernel))
        # A copy: torch writes the cache in place at a shared layer's next call (earlier graphs hold it).
        decided = eager_jax_flag(stale)
        if decided is None:
            kernel = ops.cond(stale, compute, lambda: ops.copy(self.kernel))
        else:
            kernel = compute() if decided else ops.copy(self.kernel)
        return self._store(kernel, dependencies, copy=True)

    def _store(self, kernel: Any, dependencies: list, copy: bool) -> Any:
        """Write `kernel` and the snapshots of `dependencies`; invisible, the cache holds a function of them."""
        self.kernel.assign(kernel)
        for variable, snapshot in zip(dependencies, self.snapshots):
            # Own buffer: eager JAX would share the variable's array, which `predict` donates twice.
            snapshot.assign(ops.copy(variable) if copy else variable)
        self.valid.assign(1.0)
        return kernel
