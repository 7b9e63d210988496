"""`RobustTrainingModel`: any Keras model trained through `fit` on a tulip / adversarial objective."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext._validation import ArgumentTypeError
from deel_lip_ext.attacks.gradient_attacks import as_float_tensor
from deel_lip_ext.losses.state import carry_loss_state, compile_from_saved_config
from deel_lip_ext.regularization.gradients import per_sample_loss
from deel_lip_ext.regularization.objectives import PlainTraining, get_objective

__all__ = ["RobustTrainingModel"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class RobustTrainingModel(keras.Model):
    """Wraps any Keras model so that `fit` minimizes a tulip / adversarial objective.

    Inference, `evaluate` and `predict` are the wrapped model's (clean inputs); only
    `train_step` changes. Compile it with a single loss: the objective also needs that
    loss per sample (penalties and attack directions). The logged `loss` is the data term
    plus the penalty; the penalty alone is logged as `penalty`; compiled metrics are
    computed on the (perturbed) training batch. Sample weights weight the data term only.
    Saving the wrapper to `.keras` stores the wrapped model and the objective; the trained
    model itself is `.model`, an ordinary Keras model.

    Args:
        model: the `keras.Model` to train (single input tensor, single loss).
        objective: a `PlainTraining` subclass instance or a name accepted by
            `get_objective` ("J0", "J1", "J2", "J2-Lip", "tulip", "gradient_norm").
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Trains on TensorFlow, JAX and torch: the input gradients and the double backprop go through
    `deel_lip_ext._autodiff`; on JAX the step runs as the pure function of the model's state that
    Keras's trainer compiles (`_autodiff.stateless_train_step`).

    Raises:
        NotImplementedError: on a Keras backend other than TensorFlow, JAX and torch.

    Examples:
        >>> trainer = RobustTrainingModel(model, Tulip(epsilon=0.3, lip_weight=0.1))
        >>> trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...                 metrics=["accuracy"])
        >>> trainer.fit(x_train, y_train, epochs=5, callbacks=[...])
        >>> trainer.model.save("robust.keras")
    """

    def __init__(self, model: keras.Model, objective: PlainTraining | str = "J0", **kwargs: Any) -> None:
        autodiff.require_supported_backend(type(self).__name__)
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise ArgumentTypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        self.model = model
        self.objective = get_objective(objective)
        # Tracked by the model, a random start's seed state is train-step state (JAX carries it).
        self.objective_seed_generator = getattr(self.objective, "_seed_generator", None)
        self.penalty_tracker = keras.metrics.Mean(name="penalty")
        self._sample_loss = None
        # A built wrapped model makes the wrapper built too, so that saving keeps the
        # optimizer state and loading restores it.
        self.built = model.built

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, inputs: ArrayLike, training: bool | None = None):
        return self.model(inputs, training=training)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return self.model.compute_output_shape(input_shape)

    def compile(self, optimizer: str = "rmsprop", loss: str | Callable | None = None, **kwargs: Any):
        """`keras.Model.compile`, with a single loss (a Loss instance, function or name)."""
        if loss is None or isinstance(loss, (list, tuple, dict)):
            raise ValueError(
                "`loss` must be a single loss (a keras.losses.Loss, a function or a loss "
                f"name): the objective evaluates it per sample; got {loss!r}."
            )
        self._sample_loss = keras.losses.get(loss)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)
        carry_loss_state(self)  # JAX: a loss's running mean is train-step state

    def compile_from_config(self, config: dict):
        # keras.Model skips a custom `compile` when loading; this one is safe to call.
        compile_from_saved_config(self, config)

    def _per_sample_loss(self, y_true, y_pred):
        return per_sample_loss(self._sample_loss, y_true, y_pred)

    def train_step(self, *args: Any):
        """One step on a batch: `train_step(data)` on TensorFlow and torch, `train_step(state, data)` on JAX."""
        if keras.backend.backend() == "jax":
            state, data = args
            return autodiff.stateless_train_step(self, state, lambda: self._stateful_train_step(data))
        return self._stateful_train_step(*args)

    def _stateful_train_step(self, data: tuple[ArrayLike, ArrayLike]):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (list, tuple, dict)):
            raise ArgumentTypeError("RobustTrainingModel supports models with a single input tensor.")
        x = as_float_tensor(x)
        if not self.built:  # Keras defers building to the first trace of this step
            self.build(tuple(x.shape))
        x_train = self.objective.perturb(self.model, self._per_sample_loss, x, y)

        def scaled_objective():
            y_pred, penalty = self.objective.forward(self.model, self._per_sample_loss, x_train, y)
            data_loss = self._compute_loss(x=x_train, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            penalty = ops.cast(penalty, data_loss.dtype)
            total = data_loss + penalty
            return self.optimizer.scale_loss(total), (total, penalty, y_pred)

        _, (total, penalty, y_pred), gradients = autodiff.train_step_gradients(scaled_objective, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
        self._loss_tracker.update_state(total, sample_weight=ops.shape(x)[0])
        self.penalty_tracker.update_state(penalty)
        return self.compute_metrics(x_train, y, y_pred, sample_weight=sample_weight)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "objective": keras.saving.serialize_keras_object(self.objective),
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"), custom_objects=custom_objects)
        objective = keras.saving.deserialize_keras_object(config.pop("objective"), custom_objects=custom_objects)
        return cls(model, objective, **config)
