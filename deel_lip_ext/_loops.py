"""Control flow in the form each Keras backend runs fastest: loops and state writes under a condition.

`iterate` (deel_lip_ext.parametrizations.iteration) stops once its state moves less than a
tolerance. The fastest form of that is a `while_loop` that exits early, which TensorFlow
differentiates (and torch, where Keras's `while_loop` is a Python loop). JAX cannot
reverse-differentiate a `while_loop` of data-dependent length, so on JAX the loop is a fixed count
of steps whose state freezes once converged (`cond` skips the body then). Both give the same values.

The inference cache of the layers is written only when stale where a `cond` branch may write
variables (`branches_may_write_variables`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext._optional import tensorflow

__all__ = ["differentiable_early_exit_loop", "branches_may_write_variables"]


def differentiable_early_exit_loop(
    body: Callable[[Any], Any],
    state: Any,
    eps: float,
    maxiter: int,
    distance: Callable[[Any, Any], Any],
) -> Any:
    """`state = body(state)` at least once and at most `maxiter` times, until `distance(old, new) < eps`.

    Reverse-differentiable on every backend: an early-exit `while_loop` on TensorFlow and torch,
    a frozen `fori_loop` of `maxiter` steps on JAX (same values).

    Args:
        body: one step, state -> state (any structure of tensors keras' loops accept).
        state: the initial state.
        eps: tolerance (> 0) on `distance` between two successive states.
        maxiter: maximal number of `body` calls (>= 1).
        distance: (previous, current) -> scalar tensor.

    Returns:
        The last state.

    Examples:
        >>> differentiable_early_exit_loop(lambda x: x / 2.0, keras.ops.ones(()), 0.3, 10, lambda a, b: abs(a - b))
    """
    if keras.backend.backend() == "jax":
        return _frozen_fixed_count_loop(body, state, eps, maxiter, distance)

    def not_converged(step_count, current, previous):
        return ops.logical_and(step_count < maxiter, distance(previous, current) >= eps)

    def step(step_count, current, previous):
        return step_count + 1, body(current), current

    _, state, _ = ops.while_loop(not_converged, step, (1, body(state), state), maximum_iterations=maxiter)
    return state


def _frozen_fixed_count_loop(body, state, eps, maxiter, distance):
    """Exactly `maxiter - 1` further steps after the first, the state frozen once converged (JAX's form)."""

    def step(_, carry):
        current, previous, converged = carry
        converged = ops.logical_or(converged, distance(previous, current) < eps)
        following = ops.cond(converged, lambda: current, lambda: body(current))
        return following, current, converged

    state, _, _ = ops.fori_loop(1, maxiter, step, (body(state), state, ops.convert_to_tensor(False)))
    return state


def branches_may_write_variables() -> bool:
    """Whether a branch of `keras.ops.cond` may assign variables on the active backend (TensorFlow only).

    TensorFlow orders a branch's variable writes with the rest of the graph; a JAX `cond` branch
    cannot write state, and on torch a variable written in place at a later call would change a
    tensor an earlier graph still holds. Under a `tf.distribute` strategy a mirrored variable's
    write is a cross-replica step that a `cond` branch cannot hold. There, callers compute both
    ways and write unconditionally.

    Examples:
        >>> branches_may_write_variables()  # True with KERAS_BACKEND=tensorflow
    """
    if keras.backend.backend() != "tensorflow":
        return False
    return not tensorflow("the inference cache").distribute.has_strategy()
