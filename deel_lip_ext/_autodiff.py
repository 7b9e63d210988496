"""Gradients with respect to inputs and variables, and compiled functions, on every Keras backend.

`keras.ops` has no gradient operator, so everything that differentiates by hand (adversarial
directions, the tulip penalty by double backprop, attacks, empirical Lipschitz estimates) goes
through this module, the only place that knows how each backend does it:

- TensorFlow: `tf.GradientTape`; `tf.function` compiles.
- JAX: `jax.value_and_grad`; gradients with respect to Keras variables are taken on their values
  inside a `keras.StatelessScope`; `jax.jit` compiles, with the variables' values passed as
  arguments (never frozen into the compiled function).
- torch: `torch.autograd.grad` under `torch.enable_grad()` (Keras runs `predict`/`evaluate` under
  `no_grad`); functions run eagerly.

The framework of the active backend is imported when a function is called, never at import time,
so the package imports with any one backend installed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._optional import tensorflow

__all__ = [
    "SUPPORTED_BACKENDS",
    "require_supported_backend",
    "value_and_input_gradient",
    "parameter_gradients",
    "graph_function",
    "compiled_inference",
    "run_padded",
    "compiled_pair_ratio_step",
    "compiled_cache",
    "forget_compiled",
]

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")

# Every per-model cache of compiled functions in the package, so that `forget_compiled` reaches them all.
_COMPILED_CACHES: list[weakref.WeakKeyDictionary] = []


def compiled_cache() -> weakref.WeakKeyDictionary:
    """A new per-model cache of compiled functions (model -> ...), cleared by `forget_compiled`.

    Returns:
        An empty `weakref.WeakKeyDictionary`: an entry lives as long as its model.

    Examples:
        >>> _RUN_CACHE = compiled_cache()
    """
    cache = weakref.WeakKeyDictionary()
    _COMPILED_CACHES.append(cache)
    return cache


def forget_compiled() -> None:
    """Drop every compiled function of every cache: a trace holds a model's Python constants (a layer's
    `k_coef_lip`), so one that changes them must not meet an older trace again, in any model that
    nests it either.

    Examples:
        >>> forget_compiled()  # after `Sequential.set_klip_factor`
    """
    for cache in _COMPILED_CACHES:
        cache.clear()


def require_supported_backend(feature: str) -> str:
    """Returns the active backend's name; raises NotImplementedError naming it when unsupported.

    Args:
        feature: what needs the gradients, named in the error.
    """
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise NotImplementedError(
            f"{feature} needs gradients, which deel_lip_ext implements for the Keras backends "
            f"{SUPPORTED_BACKENDS}; the active Keras backend is {backend!r}. Set KERAS_BACKEND to one of them."
        )
    return backend


def value_and_input_gradient(
    fn: Callable[[Any], tuple[Any, Any]], x: ArrayLike, differentiable: bool = False
) -> tuple[Any, Any, Any]:
    """Evaluates `values, aux = fn(x)` and the gradient of `sum(values)` with respect to `x`.

    With per-sample `values` this gives every sample's own input gradient in one pass (samples do
    not interact unless the model couples them, e.g. train-mode BatchNorm).

    Args:
        fn: `x -> (values, aux)`; `values` is any float tensor (summed), `aux` any structure of
            tensors returned as is.
        x: the float input (array or tensor).
        differentiable: keep the gradient differentiable with respect to whatever `x` and `fn`
            depend on (double backprop, for a penalty on the gradient that an outer
            `parameter_gradients` differentiates). False returns it detached, which torch needs to
            free the graph early (TensorFlow and JAX give the same values either way).

    Returns:
        `(values, aux, gradient)` with `gradient` of the shape and dtype of `x`; zeros where
        `values` does not depend on `x`. `values` and `aux` stay differentiable.

    On JAX what `fn` assigns to variables (inference caches, power-iteration vectors) is dropped:
    a value computed under differentiation cannot leave it.

    Examples:
        >>> def per_sample_loss(x):
        ...     logits = model(x, training=False)
        ...     return keras.losses.categorical_crossentropy(y, logits, from_logits=True), logits
        >>> losses, logits, gradient = value_and_input_gradient(per_sample_loss, x)
    """
    backend = require_supported_backend("value_and_input_gradient")
    x = ops.convert_to_tensor(x)
    if backend == "tensorflow":
        tf = tensorflow("value_and_input_gradient")
        with tf.GradientTape() as tape:
            tape.watch(x)
            values, aux = fn(x)
            total = tf.reduce_sum(values)
        gradient = tape.gradient(total, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif backend == "jax":
        import jax

        def total_of(inputs):
            with _discarding_writes():
                values, aux = fn(inputs)
            return ops.sum(values), (values, aux)

        (_, (values, aux)), gradient = jax.value_and_grad(total_of, has_aux=True)(x)
    else:
        import torch

        with torch.enable_grad():
            # A tensor that already carries a graph (e.g. a perturbed input that depends on the
            # parameters) is differentiated where it stands; anything else becomes a leaf.
            inputs = x if x.requires_grad else x.detach().requires_grad_(True)
            values, aux = fn(inputs)
            total = torch.sum(values)
            gradient = None
            if total.requires_grad:
                (gradient,) = torch.autograd.grad(
                    total, inputs, create_graph=differentiable, retain_graph=True, allow_unused=True
                )
        gradient = torch.zeros_like(x) if gradient is None else gradient
    if not differentiable:
        gradient = ops.stop_gradient(gradient)
    return values, aux, gradient


def _discarding_writes() -> keras.StatelessScope:
    """JAX: a scope that reads the variables as the enclosing code does and drops what `fn` assigns.

    A value assigned inside `jax.value_and_grad` (e.g. a layer's inference cache) is a tracer of the
    differentiation; written to a variable or to an enclosing `StatelessScope` (a compiled function's
    state) it would escape its trace ("UnexpectedTracerError"). The assignments are functions of the
    variables (caches, power-iteration vectors), so dropping them changes no result.
    """
    from keras.src.backend.common.stateless_scope import get_stateless_scope  # no public accessor

    enclosing = get_stateless_scope()
    scope = keras.StatelessScope()
    if enclosing is not None:
        scope.state_mapping.update(enclosing.state_mapping)
    return scope


def parameter_gradients(
    fn: Callable[[], tuple[Any, Any]], variables: Sequence[keras.Variable]
) -> tuple[Any, Any, list[Any]]:
    """Evaluates `loss, aux = fn()` and the gradients of `loss` with respect to `variables`.

    Args:
        fn: `() -> (loss, aux)` reading `variables` (e.g. a forward pass of the model that owns
            them); `loss` is a scalar.
        variables: the Keras variables to differentiate with respect to.

    Returns:
        `(loss, aux, gradients)`, one gradient per variable, zeros for a variable `loss` does not
        depend on.

    On JAX the variables are replaced by their values inside a `keras.StatelessScope` while `fn`
    runs; values that `fn` assigns to other variables (e.g. BatchNorm statistics in training mode)
    do not leave that scope: train such models with Keras's own `fit` on JAX.

    Examples:
        >>> def objective():
        ...     return ops.sum(layer(x) * upstream), None
        >>> loss, _, (kernel_gradient,) = parameter_gradients(objective, [layer.kernel])
    """
    backend = require_supported_backend("parameter_gradients")
    variables = list(variables)
    if backend == "tensorflow":
        tf = tensorflow("parameter_gradients")
        with tf.GradientTape() as tape:
            loss, aux = fn()
        # Zeros are filled in here: the tape's own ZERO mode fails on an unread Keras variable.
        gradients = tape.gradient(loss, variables)
        return loss, aux, [ops.zeros(v.shape, v.dtype) if g is None else g for v, g in zip(variables, gradients)]
    if backend == "jax":
        import jax

        def loss_of(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                loss, aux = fn()
            return loss, aux

        (loss, aux), gradients = jax.value_and_grad(loss_of, has_aux=True)([v.value for v in variables])
        return loss, aux, list(gradients)
    import torch

    with torch.enable_grad():
        loss, aux = fn()
        leaves = [v.value for v in variables]
        gradients = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
    return loss, aux, [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, gradients)]


def graph_function(fn: Callable[..., Any], variables: Sequence[keras.Variable] = ()) -> Callable[..., Any]:
    """`fn` compiled for the active backend (eager attacks and forward passes are far slower).

    Args:
        fn: a function of positional tensor arguments returning a structure of tensors; it may
            read Keras variables and call models and `value_and_input_gradient`. Python constants
            (step counts, norms) belong in its closure: JAX traces every argument.
        variables: every Keras variable `fn` reads or assigns (e.g. `model.variables` plus a
            random `SeedGenerator`'s state). On JAX their current values are passed to the compiled
            function at each call and the values it assigns are written back, so the result always
            reflects the variables' current values; a variable read by `fn` but not listed would
            be frozen at its value of the first call. TensorFlow reads variables live, torch runs
            `fn` eagerly: both ignore the argument.

    Returns:
        A callable with the signature of `fn`. Each new input shape or dtype costs one compilation
        on TensorFlow and JAX.

    Examples:
        >>> forward = graph_function(lambda x: model(x, training=False), model.variables)
        >>> logits = forward(x_batch)
    """
    backend = require_supported_backend("graph_function")
    if backend == "tensorflow":
        tf = tensorflow("graph_function")
        return tf.function(fn, reduce_retracing=True)
    if backend == "torch":
        return fn
    import jax

    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
            initial = [scope.get_current_value(v) for v in variables]
            outputs = fn(*args)
        # Which variables `fn` assigned is known at trace time: the dict's keys are static.
        assigned = {}
        for index, (variable, value) in enumerate(zip(variables, initial)):
            current = scope.get_current_value(variable)
            if current is not value:
                assigned[index] = current
        return outputs, assigned

    compiled = jax.jit(pure)

    def run(*args):
        outputs, assigned = compiled([v.value for v in variables], *args)
        for index, value in assigned.items():
            variables[index].assign(value)
        return outputs

    return run


def compiled_inference(model: keras.Model):
    """`x -> model(x, training=False)` compiled once per model (an eager forward pass is far slower on JAX)."""
    if model not in _FORWARD_CACHE:
        _FORWARD_CACHE[model] = graph_function(lambda x: model(x, training=False), model.variables)
    return _FORWARD_CACHE[model]


def run_padded(forward, x: np.ndarray, size: int) -> np.ndarray:
    """`forward(x)` as numpy, with a short batch padded to `size` rows (copies of its last row) so one
    compiled shape serves every batch; inference treats the samples of a batch independently."""
    n = len(x)
    if 0 < n < size:
        x = np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
    return ops.convert_to_numpy(forward(x))[:n]


def compiled_pair_ratio_step(model: keras.Model):
    """Compiled `pairs -> (ratios, gradient)`: pairs (2N, ...) stack the points a then b of N pairs.

    `ratios` = ||f(a) - f(b)|| / ||a - b|| per pair and `gradient` that of sum(log ratio) with respect
    to both points (inference mode treats the samples of the batch independently).
    """
    if model not in _PAIR_STEP_CACHE:

        def step(pairs):
            def log_ratios(inputs):
                outputs = model(inputs, training=False)
                outputs = ops.reshape(outputs, (ops.shape(outputs)[0], -1))
                half = ops.shape(inputs)[0] // 2
                numerator = ops.norm(outputs[:half] - outputs[half:], axis=1)
                denominator = ops.norm(ops.reshape(inputs[:half] - inputs[half:], (half, -1)), axis=1)
                ratio = numerator / denominator
                return ops.log(ratio + 1e-12), ratio

            _, ratio, gradient = value_and_input_gradient(log_ratios, pairs)
            return ratio, gradient

        _PAIR_STEP_CACHE[model] = graph_function(step, model.variables)
    return _PAIR_STEP_CACHE[model]


# One compiled pair step per model (a new trace per call would dominate).
_PAIR_STEP_CACHE = compiled_cache()
# One compiled inference forward per model, for `certify`.
_FORWARD_CACHE = compiled_cache()


def train_step_gradients(
    fn: Callable[[], tuple[Any, Any]], variables: Sequence[keras.Variable]
) -> tuple[Any, Any, list[Any]]:
    """`parameter_gradients` inside a training step: what `fn` assigns to other variables is kept.

    Args:
        fn: `() -> (loss, aux)`, a training forward pass (it may update power-iteration vectors,
            BatchNorm statistics or a loss's running mean).
        variables: the trainable variables to differentiate with respect to.

    Returns:
        `(loss, aux, gradients)` as `parameter_gradients`.

    On JAX it must run inside `stateless_train_step`: the other variables are read from the step's
    state and their new values go back to it (a value computed under `jax.value_and_grad` leaves it
    as auxiliary output). TensorFlow and torch assign them as they run: this is `parameter_gradients`.

    Examples:
        >>> loss, _, gradients = train_step_gradients(lambda: (loss_of(model(x, training=True)), None),
        ...                                           model.trainable_variables)
    """
    if require_supported_backend("train_step_gradients") != "jax":
        return parameter_gradients(fn, variables)
    import jax
    from keras.src.backend.common.stateless_scope import get_stateless_scope  # no public accessor

    enclosing = get_stateless_scope()
    if enclosing is None:
        raise RuntimeError("train_step_gradients on JAX runs inside stateless_train_step (the step's state).")
    variables = list(variables)

    def loss_of(values):
        with keras.StatelessScope() as scope:
            scope.state_mapping.update(enclosing.state_mapping)
            scope.state_mapping.update({id(v): value for v, value in zip(variables, values)})
            initial = dict(scope.state_mapping)
            loss, aux = fn()
        updates = {key: value for key, value in scope.state_mapping.items() if initial.get(key) is not value}
        return loss, (aux, updates)

    (loss, (aux, updates)), gradients = jax.value_and_grad(loss_of, has_aux=True)([v.value for v in variables])
    enclosing.state_mapping.update(updates)
    return loss, aux, list(gradients)


def stateless_train_step(model: keras.Model, state: Sequence[Sequence[Any]], step: Callable[[], Any]):
    """JAX: runs a stateful train step `step()` as the pure `(logs, state)` function Keras's trainer calls.

    `model.train_step(state, data)` on JAX receives the values of the trainable, non-trainable,
    optimizer and metrics variables and returns their new values; `step` is written as on
    TensorFlow (it assigns variables, calls `optimizer.apply_gradients`, updates metrics), and runs
    here with the variables mapped to `state` in a `keras.StatelessScope`.

    Args:
        model: the compiled model being trained.
        state: `(trainable, non_trainable, optimizer, metrics)` values, in the order of
            `model.trainable_variables`, `model.non_trainable_variables`, `model.optimizer.variables`
            and `model.metrics_variables`.
        step: `() -> logs`, the stateful step on the current batch.

    Returns:
        `(logs, new_state)` in the structure of `state`.

    Examples:
        >>> def train_step(self, state, data):  # a keras.Model subclass on JAX
        ...     return stateless_train_step(self, state, lambda: self.stateful_train_step(data))
    """
    groups = (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )
    mapping = [pair for variables, values in zip(groups, state) for pair in zip(variables, values)]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = step()
    new_state = tuple([scope.get_current_value(v) for v in variables] for variables in groups)
    return logs, new_state
