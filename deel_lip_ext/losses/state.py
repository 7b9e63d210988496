"""The variables of a compiled loss (scheduled parameters, running means) as state of JAX's training step.

TensorFlow and torch read a `keras.Variable` live in the compiled train step. JAX's trainer is a pure
function of the model's state (trainable, non-trainable, optimizer and metrics variables): any other
variable is a constant of the compiled step (a scheduled `alpha` keeps its first value) and what the
step assigns to it is dropped (MulticlassSoftHKR's running mean never moves). `carry_loss_state`
lists the loss's variables among the model's metrics variables, which the trainer passes to every
step, maps while the loss is computed, takes back and writes to the variables at the end of the
epoch; `assign_during_fit` changes one of them between two steps of an epoch.
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["carry_loss_state", "assign_during_fit", "compile_from_saved_config"]


class _LossState(keras.metrics.Metric):
    """A metric in name only: it holds the loss's variables so that JAX's trainer carries them.

    `result()` is an empty dict (no entry in the logs) and `reset_state()` keeps the values: they are
    hyper-parameters and running statistics of the whole training, not of an epoch.
    """

    def __init__(self, variables: list[keras.Variable]) -> None:
        super().__init__(name="loss_state")
        self.loss_variables = list(variables)  # tracked: they become this metric's `variables`

    def update_state(self, *args: Any, **kwargs: Any) -> None:
        del args, kwargs

    def reset_state(self) -> None:
        pass

    def result(self) -> dict:
        return {}


def _loss_variables(loss: Any) -> list[keras.Variable]:
    """The `keras.Variable` attributes of every loss object in `loss` (a loss or a structure of losses)."""
    variables = []
    for item in keras.tree.flatten(loss):
        if isinstance(item, keras.losses.Loss):
            variables.extend(value for value in vars(item).values() if isinstance(value, keras.Variable))
    return variables


def carry_loss_state(model: keras.Model) -> None:
    """Makes the variables of `model.loss` part of the state that `fit`/`evaluate` carry on JAX.

    Call it after `model.compile` (the `deel_lip_ext.callbacks` that change loss parameters call it
    in `on_train_begin`) when the loss keeps state on JAX: a `MulticlassSoftHKR` running mean, or a
    parameter assigned between two `fit` calls. Nothing changes on TensorFlow and torch, which read
    the variables live; calling it again after a new `compile` follows the new loss.

    Args:
        model: a compiled Keras model.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassSoftHKR())
        >>> carry_loss_state(model)  # JAX: the running mean moves during fit
        >>> model.fit(x, y)
    """
    if keras.backend.backend() != "jax":
        return
    variables = _loss_variables(getattr(model, "loss", None))
    # The model's own metric list (Keras has no public way to add a metric to a compiled model; a
    # tracked attribute would also be saved with the weights, which a fresh model could not load).
    metrics = model._metrics
    carried = [metric for metric in metrics if isinstance(metric, _LossState)]
    if carried and [id(v) for v in carried[0].loss_variables] == [id(v) for v in variables]:
        return
    for metric in carried:
        metrics.remove(metric)
    if variables:
        metrics.append(_LossState(variables))


def assign_during_fit(model: keras.Model, variable: keras.Variable, value: Any) -> None:
    """`variable.assign(value)` from a callback, seen by the next training step on every backend.

    During a JAX epoch the model's state lives in the trainer, not in the variables; the state is
    written back first, and the trainer reads it again (with `value`) before its next step, as
    Keras does for any callback that syncs it. Call `carry_loss_state(model)` before `fit` for a
    loss variable.

    Args:
        model: the model being trained.
        variable: the variable to assign.
        value: its new value.
    """
    if keras.backend.backend() == "jax" and getattr(model, "_jax_state", None):
        model.jax_state_sync()  # a no-op when the trainer's state is already in the variables
    variable.assign(value)


def compile_from_saved_config(model: keras.Model, config: dict) -> None:
    """What `keras.Model.compile_from_config` does, for a model whose `compile` is overridden.

    Keras skips a custom `compile` when it loads a `.keras` file (the saved loss,
    optimizer and metrics are then lost); the library's models override
    `compile` only to call `carry_loss_state` after it, which is safe at load.

    Args:
        model: the model being loaded.
        config: its saved compile config (`model.get_compile_config()`).

    Examples:
        >>> compile_from_saved_config(model, model.get_compile_config())
    """
    model.compile(**keras.saving.deserialize_keras_object(config))
    if model.built and getattr(model, "optimizer", None) is not None:
        model.optimizer.build(model.trainable_variables)
