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

__all__ = ["early_exit_loop", "loop_while_moving", "branches_may_write_variables", "eager_jax_flag"]


def early_exit_loop(
    body: Callable[[Any], Any],
    state: Any,
    eps: float,
    maxiter: int,
    distance: Callable[[Any, Any], Any],
    moved: Any = None,
) -> tuple[Any, Any]:
    """`state = body(state)` at most `maxiter` times, while the last step moved the state by `eps` or more.

    `moved` is how far the step that produced `state` moved it: below `eps`, `body` never runs.
    None means `state` is a start: the first step always runs, even with `maxiter` 0 (deel-lip's
    semantics, at least one step). The loop carries that distance rather than the previous state,
    so nothing but the state is kept per step for the gradient, and no conditional is needed to
    skip the loop (XLA compiles it, and its gradient, as one while loop). Reverse-differentiable on
    every backend: an early-exit `while_loop` on TensorFlow and torch, a frozen `fori_loop` of
    `maxiter` steps on JAX (same values).

    Args:
        body: one step, state -> state (any structure of tensors keras' loops accept).
        state: the initial state.
        eps: tolerance (> 0) on `distance` between two successive states.
        maxiter: maximal number of `body` calls (>= 0).
        distance: (previous, current) -> scalar tensor.
        moved: scalar tensor, the distance of the step that produced `state`, or None (a start).

    Returns:
        (the last state, the distance its step moved).

    Examples:
        >>> state, moved = early_exit_loop(lambda x: x / 2.0, keras.ops.ones(()), 0.3, 10, lambda a, b: abs(a - b))
    """
    if moved is None:
        first = body(state)
        return early_exit_loop(body, first, eps, maxiter - 1, distance, distance(state, first))

    def stepped(current, last_move):
        following = body(current)
        return following, distance(current, following)

    return loop_while_moving(stepped, state, moved, eps, maxiter)


def loop_while_moving(
    stepped: Callable[[Any, Any], tuple[Any, Any]], state: Any, moved: Any, eps: float, maxiter: int
) -> tuple[Any, Any]:
    """`state, moved = stepped(state, moved)` at most `maxiter` times, while `moved` is `eps` or more.

    The loop of `early_exit_loop`, for a step that measures its own move (e.g. a round of
    several iterations that reports how far its last one moved). `moved` only stops the loop:
    no gradient flows through it.

    Args:
        stepped: (state, how far the step before moved) -> (next state, how far this step moved it).
        state: the state now.
        moved: scalar tensor, how far the step that produced `state` moved it (below `eps`: no step runs).
        eps: tolerance (> 0).
        maxiter: maximal number of `stepped` calls (>= 0).

    Returns:
        (the last state, the last move).

    Examples:
        >>> halved = lambda x, _: (x / 2.0, x / 2.0)
        >>> state, moved = loop_while_moving(halved, keras.ops.ones(()), keras.ops.ones(()), 0.3, 10)
    """
    moved = ops.stop_gradient(ops.cast(ops.convert_to_tensor(moved), "float32"))
    if maxiter < 1:
        return state, moved

    def stopped_step(current, last_move):
        following, move = stepped(current, last_move)
        return following, ops.stop_gradient(ops.cast(move, "float32"))

    if keras.backend.backend() == "jax":
        return _frozen_fixed_count_loop(stopped_step, state, eps, maxiter, moved)

    def not_converged(step_count, current, last_move):
        return ops.logical_and(step_count < maxiter, last_move >= eps)

    def step(step_count, current, last_move):
        return (step_count + 1, *stopped_step(current, last_move))

    _, state, moved = ops.while_loop(not_converged, step, (0, state, moved), maximum_iterations=maxiter)
    return state, moved


def _frozen_fixed_count_loop(stepped, state, eps, maxiter, moved):
    """Exactly `maxiter` steps, the state frozen once a step moved less than `eps` (JAX's form)."""

    def step(_, carry):
        current, last_move = carry
        return ops.cond(last_move < eps, lambda: (current, last_move), lambda: stepped(current, last_move))

    return ops.fori_loop(0, maxiter, step, (state, moved))


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


def eager_jax_flag(flag: Any) -> bool | None:
    """`flag` as a Python bool on JAX outside a trace, else None (use `keras.ops.cond`).

    An eager `jax.lax.cond` compiles its branches at every call (new closures each time): a
    layer's inference call took 0.3 s for a 16 x 16 kernel. Outside a trace the flag has a value,
    and Python can choose the branch. TensorFlow and torch run an eager `cond` in Python already.

    Args:
        flag: a boolean scalar tensor.

    Examples:
        >>> eager_jax_flag(keras.ops.convert_to_tensor(True))  # True on eager JAX, None elsewhere
    """
    if keras.backend.backend() != "jax":
        return None
    from jax.core import Tracer  # the JAX backend is active: jax is installed

    return None if isinstance(flag, Tracer) else bool(flag)
