"""Lipschitz-regularized and adversarial training of ordinary Keras models ("tulip").

Finlay, Calder, Abbasi & Oberman show that adversarial training is, to first order, a
penalty on the input gradient of the loss, and that adding a Lipschitz term (the batch
max of input-gradient norms) makes models markedly more robust. This module trains *any*
Keras model with these objectives through `model.fit`, by wrapping it in
`RobustTrainingModel`:

| paper name   | objective class         | training loss                                                      |
|--------------|-------------------------|--------------------------------------------------------------------|
| J0           | `PlainTraining`         | E[l(x)]                                                            |
| J1           | `FGSMTraining`          | E[l(x')], x' = x + eps sign(g)/sqrt(D), first order l + eps/sqrt(D) ‖g‖₁ |
| J2           | `L2AdversarialTraining` | E[l(x')], x' = x + eps g/‖g‖₂, first order l + eps ‖g‖₂               |
| J2-Lip       | `Tulip`                 | J2 + lip_weight max over the batch of ‖∇ₓl(x')‖₂ (double backprop)  |
| 2019 variant | `GradientNormPenalty`   | E[l(x)] + lip_weight/2 E[((l(x + h v) - l(x))/h)²]                  |
|              | `PGDTraining`           | E[l(x_pgd)], Madry's projected gradient attack (l2 or linf)         |

with g = grad_x l(x) computed in inference mode and detached. Measurement helpers give the
columns of the paper's table: `adversarial_distances` / `median_adversarial_distance`,
`error_at_eps` and `lipschitz_estimate` (an empirical *estimate* of the Lipschitz constant
over data points, a lower bound, not a certificate).

Input gradients need backend autodiff; that code lives in `deel_lip_ext._input_gradients`
and is implemented for the TensorFlow backend (other backends raise NotImplementedError).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

import keras
from keras import ops

from deel_lip_ext import _input_gradients as autodiff
from deel_lip_ext import attacks, utils

NORMS = ("l2", "linf")
PENALTY_SCALINGS = ("sample", "batch_mean")
FINITE_DIFFERENCE_ORDERS = (1, 2)
ATTACK_LOSSES = ("ce", "cw")


# ----------------------------------------------------------------------------- checks


def _check_choice(value, name, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
    return value


def _check_number(value, name, minimum=0.0, strict=True, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {bound} {minimum}, got {value!r}.")
    return float(value)


def _check_count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_clip_range(clip_min, clip_max):
    for value, name in ((clip_min, "clip_min"), (clip_max, "clip_max")):
        if value is not None and not isinstance(value, (int, float, np.number)):
            raise TypeError(f"`{name}` must be a number or None, got {value!r}.")
    if clip_min is not None and clip_max is not None and clip_min >= clip_max:
        raise ValueError(f"`clip_min` must be < `clip_max`, got {clip_min!r} >= {clip_max!r}.")
    return clip_min, clip_max


# ------------------------------------------------------------------ tensor helpers


def _as_column(per_sample, x):
    """Reshapes a (batch,) tensor so that it broadcasts against `x`."""
    return ops.reshape(per_sample, (-1,) + (1,) * (len(x.shape) - 1))


def _flatten_samples(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def sample_norms(x: ArrayLike, norm: str = "l2"):
    """Per-sample norms of a batch, over all axes but the first.

    Args:
        x: batch tensor.
        norm: "l2", "linf" or "l1" (the dual of linf).

    Examples:
        >>> sample_norms(x_adv - x, "l2")  # shape (batch,)
    """
    flat = _flatten_samples(x)
    if norm == "l2":
        return ops.sqrt(ops.sum(ops.square(flat), axis=1))
    if norm == "linf":
        return ops.max(ops.abs(flat), axis=1)
    if norm == "l1":
        return ops.sum(ops.abs(flat), axis=1)
    raise ValueError(f"`norm` must be one of ('l2', 'linf', 'l1'), got {norm!r}.")


def _steepest_ascent_direction(gradient, norm):
    """Unit-norm direction of steepest ascent: g/||g||_2 (0 where g = 0) or sign(g)."""
    if norm == "linf":
        return ops.sign(gradient)
    length = _as_column(sample_norms(gradient, "l2"), gradient)
    safe_length = ops.where(length > 0, length, ops.ones_like(length))
    return ops.where(length > 0, gradient / safe_length, ops.zeros_like(gradient))


def _clip_to_range(x, clip_min, clip_max):
    if clip_min is None and clip_max is None:
        return x
    low = -np.inf if clip_min is None else clip_min
    high = np.inf if clip_max is None else clip_max
    return ops.clip(x, low, high)


def _sample_dimension(x):
    return ops.cast(ops.size(x[0]), x.dtype)


def _as_float_tensor(x):
    x = ops.convert_to_tensor(x)
    if "float" not in keras.backend.standardize_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return x


# ----------------------------------------------------------------------- losses


def per_sample_loss(loss: str | Callable, y_true: ArrayLike, y_pred: ArrayLike) -> Any:
    """Unreduced loss, one value per sample.

    Args:
        loss: a `keras.losses.Loss` (its `call`, which skips the batch reduction) or a
            function `loss(y_true, y_pred)` returning per-sample values.
        y_true: targets and predictions.
        y_pred: targets and predictions.

    Returns:
        Tensor of shape (batch,): extra axes (e.g. per-pixel losses) are averaged.

    Examples:
        >>> per_sample_loss(keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...                 y, model(x))
    """
    if isinstance(loss, keras.losses.Loss):
        values = loss.call(y_true, y_pred)
    else:
        values = loss(y_true, y_pred)
    values = ops.convert_to_tensor(values)
    if len(values.shape) > 1:
        values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)
    return values


def _labels_as_indices(y):
    y = ops.convert_to_tensor(y)
    if len(y.shape) > 1 and y.shape[-1] is not None and y.shape[-1] > 1:
        return ops.argmax(y, axis=-1)
    return ops.cast(ops.reshape(y, (-1,)), "int32")


def cross_entropy_loss(y_true: ArrayLike, logits: ArrayLike):
    """Per-sample softmax cross-entropy of logits (integer or one-hot labels).

    Examples:
        >>> cross_entropy_loss(y, model(x))  # shape (batch,)
    """
    return keras.losses.sparse_categorical_crossentropy(_labels_as_indices(y_true), logits, from_logits=True)


def margin_loss(y_true: ArrayLike, logits: ArrayLike):
    """Carlini-Wagner margin max_{j != y} z_j - z_y: positive exactly when misclassified.

    Examples:
        >>> margin_loss(y, model(x))  # shape (batch,)
    """
    labels = _labels_as_indices(y_true)
    true_mask = ops.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    true_logit = ops.sum(logits * true_mask, axis=-1)
    # 1e9 keeps the true class out of the max without producing inf - inf.
    other_logit = ops.max(logits - 1e9 * true_mask, axis=-1)
    return other_logit - true_logit


_ATTACK_LOSS_FUNCTIONS = {"ce": cross_entropy_loss, "cw": margin_loss}


# ------------------------------------------------- input gradients and the penalties


def loss_input_gradient(
    model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike, training: bool = False
) -> tuple[Any, Any, Any]:
    """Per-sample losses, predictions and per-sample input gradients of the loss.

    The gradient is that of the *summed* loss, so row i is grad_{x_i} l_i (samples are
    independent unless the model couples them, e.g. BatchNorm with `training=True`).
    Under an outer parameter tape it stays differentiable (double backprop).

    Args:
        model: a Keras model (or any callable `model(x, training=...)`).
        loss_fn: per-sample loss `loss_fn(y_true, y_pred)` -> (batch,).
        x: input batch (float).
        y: targets.
        training: mode of the forward pass (False freezes BatchNorm, disables dropout).

    Returns:
        `(losses, y_pred, gradient)` with `gradient.shape == x.shape`.

    Examples:
        >>> losses, logits, g = loss_input_gradient(model, cross_entropy_loss, x, y)
    """
    autodiff.require_supported_backend("loss_input_gradient")

    def evaluate(inputs):
        y_pred = model(inputs, training=training)
        return loss_fn(y, y_pred), y_pred

    return autodiff.value_and_input_gradient(evaluate, _as_float_tensor(x))


def _detached_ascent_direction(model, loss_fn, x, y, norm):
    """Steepest-ascent direction of the loss at x, in inference mode, without gradient."""
    _, _, gradient = loss_input_gradient(model, loss_fn, x, y, training=False)
    return ops.stop_gradient(_steepest_ascent_direction(gradient, norm))


def lipschitz_penalty(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    lip_weight: float,
    penalty_scaling: str = "sample",
    training: bool = True,
) -> tuple[Any, Any]:
    """tulip's Lipschitz term lip_weight * max_i ||grad_{x_i} l||_2, by double backprop.

    One forward pass gives both the predictions (for the data term) and the input
    gradient; the penalty is differentiable w.r.t. the model parameters through it.

    Args:
        model: as in `loss_input_gradient`.
        loss_fn: as in `loss_input_gradient`.
        x: as in `loss_input_gradient`.
        y: as in `loss_input_gradient`.
        lip_weight: lambda >= 0.
        penalty_scaling: "sample": lambda * max_i ||grad l_i|| (the paper's formula);
            "batch_mean": gradient of the batch-*mean* loss as in the 2018 reference code,
            i.e. lambda / B * max_i ||grad l_i|| (so lambda depends on the batch size B).
        training: mode of the forward pass.

    Returns:
        `(y_pred, penalty)`.

    Examples:
        >>> logits, penalty = lipschitz_penalty(model, cross_entropy_loss, x, y, 0.1)
    """
    _check_choice(penalty_scaling, "penalty_scaling", PENALTY_SCALINGS)
    _, y_pred, gradient = loss_input_gradient(model, loss_fn, x, y, training=training)
    largest = ops.max(sample_norms(gradient, "l2"))
    if penalty_scaling == "batch_mean":
        largest = largest / ops.cast(ops.shape(gradient)[0], largest.dtype)
    return y_pred, lip_weight * largest


def finite_difference_gradient_norms(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    step: float = 0.01,
    order: int = 1,
    norm: str = "l2",
    training: bool = True,
) -> tuple[Any, Any, Any]:
    """Per-sample directional derivatives dl_i ~ ||grad l_i|| without double backprop.

    The direction v_i is the detached steepest-ascent direction of the loss (inference
    mode): g/||g||_2 for norm "l2" (then dl_i ~ ||g_i||_2), sign(g) for "linf" (then
    dl_i ~ ||g_i||_1). Gradients flow through the loss evaluations, not through v.

    Args:
        model: as in `loss_input_gradient`.
        loss_fn: as in `loss_input_gradient`.
        x: as in `loss_input_gradient`.
        y: as in `loss_input_gradient`.
        step: finite-difference step h > 0.
        order: 1 (forward difference, the 2019 default) or 2 (central difference).
        norm: "l2" or "linf".
        training: mode of the forward passes.

    Returns:
        `(y_pred, losses, derivatives)`: predictions and per-sample losses at x, and dl.

    Examples:
        >>> logits, losses, dl = finite_difference_gradient_norms(model, cross_entropy_loss, x, y)
    """
    step = _check_number(step, "step")
    _check_choice(order, "order", FINITE_DIFFERENCE_ORDERS)
    _check_choice(norm, "norm", NORMS)
    x = _as_float_tensor(x)
    direction = _detached_ascent_direction(model, loss_fn, x, y, norm)
    y_pred = model(x, training=training)
    losses = loss_fn(y, y_pred)
    ahead = loss_fn(y, model(x + step * direction, training=training))
    if order == 1:
        return y_pred, losses, (ahead - losses) / step
    behind = loss_fn(y, model(x - step * direction, training=training))
    return y_pred, losses, (ahead - behind) / (2.0 * step)


# ------------------------------------------------------------------ in-graph PGD


def _random_start(x, epsilon, norm, seed):
    if norm == "linf":
        return keras.random.uniform(ops.shape(x), -1.0, 1.0, dtype=x.dtype, seed=seed) * epsilon
    # Uniform in the l2 ball: Gaussian direction, radius eps * U^(1/D).
    direction = _steepest_ascent_direction(keras.random.normal(ops.shape(x), dtype=x.dtype, seed=seed), "l2")
    fraction = keras.random.uniform((ops.shape(x)[0],), dtype=x.dtype, seed=seed)
    radius = ops.power(fraction, 1.0 / _sample_dimension(x))
    return direction * _as_column(radius, x) * epsilon


def _project(delta, epsilon, norm):
    if norm == "linf":
        return ops.clip(delta, -epsilon, epsilon)
    length = _as_column(sample_norms(delta, "l2"), delta)
    return delta * ops.minimum(1.0, epsilon / ops.maximum(length, 1e-12))


def pgd_perturbation(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    epsilon: float,
    norm: str = "l2",
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    clip_min: float | None = None,
    clip_max: float | None = None,
    seed: int | None = None,
) -> Any:
    """In-graph projected gradient ascent on the loss (Madry et al.), for training steps.

    Unlike `deel_lip_ext.attacks.pgd` (numpy in, numpy out), this runs inside
    `train_step` on symbolic tensors and accepts one epsilon per sample.

    Args:
        model: as in `loss_input_gradient` (inference mode is used).
        loss_fn: as in `loss_input_gradient` (inference mode is used).
        x: as in `loss_input_gradient` (inference mode is used).
        y: as in `loss_input_gradient` (inference mode is used).
        epsilon: radius, a float or a (batch,) tensor.
        norm: "l2" or "linf".
        steps: number of ascent steps.
        step_size: step length; None means 2.5 * epsilon / steps.
        random_start: start uniformly in the epsilon-ball instead of at x.
        clip_min: valid input range (None: unbounded).
        clip_max: valid input range (None: unbounded).
        seed: int or `keras.random.SeedGenerator` for the random start.

    Returns:
        The adversarial batch, detached (no gradient flows through it).

    Examples:
        >>> x_adv = pgd_perturbation(model, cross_entropy_loss, x, y, epsilon=1.0)
    """
    _check_choice(norm, "norm", NORMS)
    steps = _check_count(steps, "steps")
    x = _as_float_tensor(x)
    epsilon = ops.cast(epsilon, x.dtype)
    if len(epsilon.shape) == 1:
        epsilon = _as_column(epsilon, x)
    step_size = 2.5 * epsilon / steps if step_size is None else ops.cast(step_size, x.dtype)
    delta = _random_start(x, epsilon, norm, seed) if random_start else ops.zeros_like(x)
    delta = _clip_to_range(x + delta, clip_min, clip_max) - x
    for _ in range(steps):
        direction = _detached_ascent_direction(model, loss_fn, x + delta, y, norm)
        delta = _project(delta + step_size * direction, epsilon, norm)
        delta = _clip_to_range(x + delta, clip_min, clip_max) - x
    return ops.stop_gradient(x + delta)


# -------------------------------------------------------------------- objectives


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class PlainTraining:
    """J0: plain empirical risk E[l(x)]; also the base class of every objective.

    An objective does two things in a training step: `perturb` replaces the batch by a
    detached adversarial batch (identity here), and `forward` runs the training-mode
    forward pass and returns the predictions with an extra penalty (zero here). The data
    term itself is the model's compiled loss on the predictions.

    Examples:
        >>> trainer = RobustTrainingModel(model, PlainTraining())
    """

    paper_name = "J0"

    def perturb(self, model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike):
        """Returns the batch to train on; no gradient may flow through it."""
        return x

    def forward(self, model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike):
        """Returns `(y_pred, penalty)` of the training-mode forward pass on x."""
        return model(x, training=True), ops.zeros((), dtype=keras.config.floatx())

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


class _OneStepAdversarialTraining(PlainTraining):
    """Replaces the batch by x + epsilon * (unit ascent direction of the loss)."""

    ascent_norm = "l2"

    def __init__(self, epsilon: float = 0.01, clip_min: float | None = None, clip_max: float | None = None):
        self.epsilon = _check_number(epsilon, "epsilon", strict=False)
        self.clip_min, self.clip_max = _check_clip_range(clip_min, clip_max)

    def _step(self, direction):
        return self.epsilon * direction

    def perturb(self, model, loss_fn, x, y):
        direction = _detached_ascent_direction(model, loss_fn, x, y, self.ascent_norm)
        return ops.stop_gradient(_clip_to_range(x + self._step(direction), self.clip_min, self.clip_max))

    def get_config(self):
        return {"epsilon": self.epsilon, "clip_min": self.clip_min, "clip_max": self.clip_max}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FGSMTraining(_OneStepAdversarialTraining):
    """J1: FGSM adversarial training, first-order equal to E[l + eps/sqrt(D) ||grad l||_1].

    The batch is replaced by x + epsilon * sign(g) / sqrt(D) (D = input dimension), as in
    the tulip reference code: every step has l2 length epsilon, so J1 and J2 use the same
    budget. g is the input gradient in inference mode; no gradient flows through it.

    Args:
        epsilon: l2 length of the perturbation (>= 0); 0.01 in the paper ([0,1] pixels).
        clip_min: valid input range, or None (the reference code does not clip).
        clip_max: valid input range, or None (the reference code does not clip).

    Examples:
        >>> trainer = RobustTrainingModel(model, FGSMTraining(epsilon=0.3))
    """

    paper_name = "J1"
    ascent_norm = "linf"

    def _step(self, direction):
        return self.epsilon * direction / ops.sqrt(_sample_dimension(direction))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class L2AdversarialTraining(_OneStepAdversarialTraining):
    """J2: one-step l2 adversarial training, first-order equal to E[l + eps ||grad l||_2].

    The batch is replaced by x + epsilon * g / ||g||_2 per sample (samples with g = 0 are
    unchanged); g is the input gradient in inference mode, detached.

    Args:
        epsilon: l2 length of the perturbation (>= 0); 0.01 in the paper.
        clip_min: valid input range, or None.
        clip_max: valid input range, or None.

    Examples:
        >>> trainer = RobustTrainingModel(model, L2AdversarialTraining(epsilon=0.3))
    """

    paper_name = "J2"


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Tulip(L2AdversarialTraining):
    """J2-Lip ("tulip"): J2 plus lip_weight * max over the batch of ||grad_x l||_2.

    The max is taken on the perturbed batch, in the training forward pass, and
    differentiated by double backprop (second-order autodiff through the input gradient).

    Args:
        epsilon: l2 length of the J2 perturbation (>= 0); 0.01 in the paper.
        lip_weight: lambda >= 0; 0.1 in the paper.
        penalty_scaling: "batch_mean" (default, the 2018 code: gradient of the batch-mean
            loss, i.e. lambda / B * max_i ||grad l_i||) or "sample" (the paper's formula,
            lambda * max_i ||grad l_i||, independent of the batch size).
        clip_min: valid input range, or None.
        clip_max: valid input range, or None.

    Examples:
        >>> trainer = RobustTrainingModel(model, Tulip(epsilon=0.3, lip_weight=0.1,
        ...                                            penalty_scaling="sample"))
    """

    paper_name = "J2-Lip"

    def __init__(
        self,
        epsilon: float = 0.01,
        lip_weight: float = 0.1,
        penalty_scaling: str = "batch_mean",
        clip_min: float | None = None,
        clip_max: float | None = None,
    ) -> None:
        super().__init__(epsilon=epsilon, clip_min=clip_min, clip_max=clip_max)
        self.lip_weight = _check_number(lip_weight, "lip_weight", strict=False)
        self.penalty_scaling = _check_choice(penalty_scaling, "penalty_scaling", PENALTY_SCALINGS)

    def forward(self, model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike):
        return lipschitz_penalty(model, loss_fn, x, y, self.lip_weight, self.penalty_scaling, training=True)

    def get_config(self) -> dict:
        return {**super().get_config(), "lip_weight": self.lip_weight, "penalty_scaling": self.penalty_scaling}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GradientNormPenalty(PlainTraining):
    """2019 variant: E[l(x)] + lip_weight / 2 * E[dl^2] with dl a finite difference.

    dl_i = (l(x_i + h v_i) - l(x_i)) / h ~ ||grad l_i|| along the detached ascent
    direction v_i (see `finite_difference_gradient_norms`): no double backprop, only one
    input gradient and one (order 1) or two (order 2) extra forward passes.

    Args:
        lip_weight: lambda >= 0; 0.1 in the 2019 code.
        step: h > 0; 0.01 in the 2019 code.
        order: 1 (forward difference) or 2 (central difference).
        norm: "l2" (penalizes ||grad l||_2) or "linf" (direction sign(g): ||grad l||_1).

    Examples:
        >>> trainer = RobustTrainingModel(model, GradientNormPenalty(lip_weight=0.1))
    """

    paper_name = "FD-penalty"

    def __init__(self, lip_weight: float = 0.1, step: float = 0.01, order: int = 1, norm: str = "l2") -> None:
        self.lip_weight = _check_number(lip_weight, "lip_weight", strict=False)
        self.step = _check_number(step, "step")
        self.order = _check_choice(order, "order", FINITE_DIFFERENCE_ORDERS)
        self.norm = _check_choice(norm, "norm", NORMS)

    def forward(self, model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike):
        y_pred, _, derivatives = finite_difference_gradient_norms(
            model, loss_fn, x, y, step=self.step, order=self.order, norm=self.norm, training=True
        )
        return y_pred, 0.5 * self.lip_weight * ops.mean(ops.square(derivatives))

    def get_config(self) -> dict:
        return {"lip_weight": self.lip_weight, "step": self.step, "order": self.order, "norm": self.norm}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class PGDTraining(PlainTraining):
    """Madry-style adversarial training: the batch is replaced by a PGD adversarial batch.

    Args:
        epsilon: attack radius (> 0) in the chosen norm.
        norm: "l2" or "linf".
        steps: PGD steps per training step (7 in Madry et al.).
        step_size: None means 2.5 * epsilon / steps.
        random_start: start uniformly in the epsilon-ball.
        clip_min: valid input range, or None.
        clip_max: valid input range, or None.
        seed: int seed of the random start.

    Examples:
        >>> trainer = RobustTrainingModel(model, PGDTraining(epsilon=0.1, norm="linf"))
    """

    paper_name = "PGD-AT"

    def __init__(
        self,
        epsilon: float,
        norm: str = "l2",
        steps: int = 7,
        step_size: float | None = None,
        random_start: bool = True,
        clip_min: float | None = None,
        clip_max: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.epsilon = _check_number(epsilon, "epsilon")
        self.norm = _check_choice(norm, "norm", NORMS)
        self.steps = _check_count(steps, "steps")
        self.step_size = _check_number(step_size, "step_size", allow_none=True)
        self.random_start = bool(random_start)
        self.clip_min, self.clip_max = _check_clip_range(clip_min, clip_max)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed) if self.random_start else None

    def perturb(self, model: keras.Model, loss_fn: Callable, x: ArrayLike, y: ArrayLike):
        return pgd_perturbation(
            model,
            loss_fn,
            x,
            y,
            self.epsilon,
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            random_start=self.random_start,
            clip_min=self.clip_min,
            clip_max=self.clip_max,
            seed=self._seed_generator,
        )

    def get_config(self) -> dict:
        return {
            "epsilon": self.epsilon,
            "norm": self.norm,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "clip_min": self.clip_min,
            "clip_max": self.clip_max,
            "seed": self.seed,
        }


_OBJECTIVES_BY_NAME = {
    "J0": PlainTraining,
    "J1": FGSMTraining,
    "J2": L2AdversarialTraining,
    "J2-Lip": Tulip,
    "tulip": Tulip,
    "gradient_norm": GradientNormPenalty,
}


def get_objective(identifier: PlainTraining | str | dict):
    """Returns an objective from an instance, a paper name (defaults of the paper) or a config.

    Args:
        identifier: a `PlainTraining` instance, one of "J0", "J1", "J2", "J2-Lip",
            "tulip", "gradient_norm", or a dict from `keras.saving.serialize_keras_object`.

    Examples:
        >>> get_objective("J2-Lip")
        Tulip(epsilon=0.01, clip_min=None, clip_max=None, lip_weight=0.1, penalty_scaling='batch_mean')
    """
    if isinstance(identifier, PlainTraining):
        return identifier
    if isinstance(identifier, dict):
        objective = keras.saving.deserialize_keras_object(identifier)
        if isinstance(objective, PlainTraining):
            return objective
    if isinstance(identifier, str) and identifier in _OBJECTIVES_BY_NAME:
        return _OBJECTIVES_BY_NAME[identifier]()
    raise ValueError(
        f"`objective` must be a PlainTraining instance (PlainTraining, FGSMTraining, "
        f"L2AdversarialTraining, Tulip, GradientNormPenalty, PGDTraining), a serialized one, "
        f"or one of {tuple(_OBJECTIVES_BY_NAME)}; got {identifier!r}."
    )


# ------------------------------------------------------------------------ model


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

    Raises:
        NotImplementedError: on a Keras backend other than TensorFlow.

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
            raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
        self.model = model
        self.objective = get_objective(objective)
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

    def compile_from_config(self, config: dict):
        # keras.Model skips a custom `compile` when loading; this one is safe to call.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _per_sample_loss(self, y_true, y_pred):
        return per_sample_loss(self._sample_loss, y_true, y_pred)

    def train_step(self, data: tuple[ArrayLike, ArrayLike]):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, (list, tuple, dict)):
            raise TypeError("RobustTrainingModel supports models with a single input tensor.")
        x = _as_float_tensor(x)
        if not self.built:  # Keras defers building to the first trace of this step
            self.build(tuple(x.shape))
        x_train = self.objective.perturb(self.model, self._per_sample_loss, x, y)

        def scaled_objective():
            y_pred, penalty = self.objective.forward(self.model, self._per_sample_loss, x_train, y)
            data_loss = self._compute_loss(x=x_train, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            penalty = ops.cast(penalty, data_loss.dtype)
            total = data_loss + penalty
            return self.optimizer.scale_loss(total), (total, penalty, y_pred)

        _, (total, penalty, y_pred), gradients = autodiff.parameter_gradients(scaled_objective, self.trainable_weights)
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


# ------------------------------------------------------------------- measurement


def _labels_array(y):
    y = np.asarray(y)
    return y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)


def _predicted_labels(model, x, batch_size):
    # Direct calls rather than `model.predict`, which retraces for every new model.
    batches = (model(x[start : start + batch_size], training=False) for start in range(0, len(x), batch_size))
    return np.concatenate([ops.convert_to_numpy(ops.argmax(logits, axis=-1)) for logits in batches])


def _battery_function(model, norm, attack_steps, clip_min, clip_max):
    """Compiled `(x, y, epsilon) -> (fooled, perturbation norm)` for the attack battery.

    The battery is PGD without random start on the cross-entropy and on the margin loss;
    a sample is fooled when any attack fools it, and the norm is that of the smallest
    successful perturbation (at most epsilon).
    """

    def run(x, y, epsilon):
        fooled = ops.zeros((ops.shape(x)[0],), dtype="bool")
        smallest = ops.full((ops.shape(x)[0],), np.inf, dtype=x.dtype)
        for attack_loss in ATTACK_LOSSES:
            x_adv = pgd_perturbation(
                model,
                _ATTACK_LOSS_FUNCTIONS[attack_loss],
                x,
                y,
                epsilon,
                norm=norm,
                steps=attack_steps,
                random_start=False,
                clip_min=clip_min,
                clip_max=clip_max,
            )
            success = ops.not_equal(
                ops.cast(ops.argmax(model(x_adv, training=False), axis=-1), "int32"), ops.cast(y, "int32")
            )
            size = sample_norms(x_adv - x, norm)
            fooled = ops.logical_or(fooled, success)
            smallest = ops.where(success, ops.minimum(smallest, size), smallest)
        return fooled, smallest

    return autodiff.graph_function(run)


def _check_measurement_arguments(norm, attack_steps, batch_size, clip_min, clip_max):
    _check_choice(norm, "norm", NORMS)
    _check_count(attack_steps, "attack_steps")
    _check_count(batch_size, "batch_size")
    _check_clip_range(clip_min, clip_max)


def adversarial_distances(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    norm: str = "l2",
    max_epsilon: float | None = None,
    bisection_steps: int = 12,
    attack_steps: int = 20,
    batch_size: int = 256,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> np.ndarray:
    """Smallest adversarial perturbation found per sample by bisection on epsilon.

    For every sample, epsilon is bisected between 0 and `max_epsilon`; at each epsilon a
    battery of attacks (PGD on cross-entropy and on the margin loss) is run, and a
    success also shrinks the upper end to the norm actually used. The result is an upper
    bound on each sample's true minimal adversarial distance (what the attacks found).

    Args:
        model: classifier returning logits (the argmax is the predicted class).
        x: inputs (numpy), y: integer or one-hot labels.
        norm: "l2" or "linf".
        max_epsilon: largest radius tried; None means the diameter of the input box
            (sqrt(D) * (clip_max - clip_min) in l2, clip_max - clip_min in linf).
        bisection_steps: bisection iterations (resolution max_epsilon / 2**steps).
        attack_steps: PGD steps per attack.
        batch_size: samples attacked at once.
        clip_min: valid input range, or None.
        clip_max: valid input range, or None.

    Returns:
        numpy array (N,): 0 for misclassified points, inf where no attack succeeds at
        `max_epsilon`.

    Examples:
        >>> d = adversarial_distances(model, x_test[:500], y_test[:500], norm="l2")
        >>> float(np.median(d))
    """
    autodiff.require_supported_backend("adversarial_distances")
    _check_measurement_arguments(norm, attack_steps, batch_size, clip_min, clip_max)
    bisection_steps = _check_count(bisection_steps, "bisection_steps", minimum=0)
    x = np.asarray(x, dtype=keras.config.floatx())
    labels = _labels_array(y)
    if max_epsilon is None:
        if clip_min is None or clip_max is None:
            raise ValueError("`max_epsilon` is required when `clip_min` or `clip_max` is None.")
        width = clip_max - clip_min
        max_epsilon = width * np.sqrt(x[0].size) if norm == "l2" else width
    max_epsilon = _check_number(max_epsilon, "max_epsilon")
    battery = _battery_function(model, norm, attack_steps, clip_min, clip_max)
    misclassified = _predicted_labels(model, x, batch_size) != labels
    distances = np.zeros(len(x))
    for start in range(0, len(x), batch_size):
        x_batch, y_batch = x[start : start + batch_size], labels[start : start + batch_size]
        fooled, size = (np.asarray(t) for t in battery(x_batch, y_batch, np.full(len(x_batch), max_epsilon, x.dtype)))
        high = np.where(fooled, size, max_epsilon)
        low = np.zeros_like(high)
        for _ in range(bisection_steps):
            middle = ((low + high) / 2).astype(x.dtype)
            success, size = (np.asarray(t) for t in battery(x_batch, y_batch, middle))
            high = np.where(success, np.minimum(middle, size), high)
            low = np.where(success, np.minimum(low, high), middle)
        distances[start : start + batch_size] = np.where(fooled, high, np.inf)
    distances[misclassified] = 0.0
    return distances


def median_adversarial_distance(
    model: keras.Model, x: ArrayLike, y: ArrayLike, norm: str = "l2", **kwargs: Any
) -> float:
    """Median over samples of `adversarial_distances` (the paper's "median distance").

    Args:
        model: as in `adversarial_distances`.
        x: as in `adversarial_distances`.
        y: as in `adversarial_distances`.
        norm: as in `adversarial_distances`.
        **kwargs: other arguments of `adversarial_distances`.

    Returns:
        float (0 when at least half of the points are misclassified).

    Examples:
        >>> median_adversarial_distance(model, x_test[:500], y_test[:500], norm="l2")
    """
    return float(np.median(adversarial_distances(model, x, y, norm=norm, **kwargs)))


def error_at_eps(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    epsilon: float,
    norm: str = "l2",
    attack_steps: int = 20,
    batch_size: int = 256,
    clip_min: float = 0.0,
    clip_max: float = 1.0,
) -> float:
    """Robust error at radius epsilon: fraction of points misclassified, or fooled by the battery.

    The battery is `deel_lip_ext.attacks.pgd` without random start on the cross-entropy
    and on the margin loss, the attacks used by `adversarial_distances`.

    Args:
        model: classifier returning logits.
        x: inputs (numpy) and integer or one-hot labels.
        y: inputs (numpy) and integer or one-hot labels.
        epsilon: attack radius (>= 0; 0 gives the clean error).
        norm: "l2" or "linf".
        attack_steps: PGD steps per attack.
        batch_size: samples attacked at once.
        clip_min: valid input range, or None.
        clip_max: valid input range, or None.

    Returns:
        float in [0, 1].

    Examples:
        >>> error_at_eps(model, x_test[:500], y_test[:500], epsilon=1.0, norm="l2")
    """
    autodiff.require_supported_backend("error_at_eps")
    _check_measurement_arguments(norm, attack_steps, batch_size, clip_min, clip_max)
    epsilon = _check_number(epsilon, "epsilon", strict=False)
    x = np.asarray(x, dtype=keras.config.floatx())
    labels = _labels_array(y)
    wrong = _predicted_labels(model, x, batch_size) != labels
    if epsilon > 0:
        for attack_loss in ATTACK_LOSSES:
            x_adv = attacks.pgd(
                model,
                x,
                labels,
                epsilon,
                norm=norm,
                steps=attack_steps,
                loss=attack_loss,
                random_start=False,
                clip_min=clip_min,
                clip_max=clip_max,
                batch_size=batch_size,
            )
            wrong |= _predicted_labels(model, x_adv, batch_size) != labels
    return float(np.mean(wrong))


def error_curve(distances: ArrayLike, epsilons: Sequence[float] | ArrayLike) -> np.ndarray:
    """Robust error at each epsilon implied by per-sample adversarial distances.

    Args:
        distances: output of `adversarial_distances`.
        epsilons: radii.

    Returns:
        numpy array: fraction of points with distance <= epsilon, for each epsilon.

    Examples:
        >>> error_curve(adversarial_distances(model, x, y), np.linspace(0, 3, 31))
    """
    distances = np.asarray(distances)
    return np.array([np.mean(distances <= eps) for eps in np.asarray(epsilons)])


def lipschitz_estimate(model: keras.Model, x: ArrayLike, batch_size: int = 128) -> float:
    """Empirical ESTIMATE of the l2 Lipschitz constant: max over x of ||J_f(x)||_2.

    The spectral norm of the input Jacobian of the model output (inference mode),
    maximized over the given points (`deel_lip_ext.utils.evaluate_lip_const`). It is a
    *lower bound* on the true Lipschitz constant, not a certificate: use
    `deel_lip_ext.utils.model_lipschitz_bound` for an upper bound on constrained models.

    Args:
        model: any Keras model (single input).
        x: points (numpy).
        batch_size: Jacobians computed at once.

    Returns:
        float.

    Examples:
        >>> lipschitz_estimate(model, x_test[:1000])
    """
    autodiff.require_supported_backend("lipschitz_estimate")
    return utils.evaluate_lip_const(model, x, batch_size=_check_count(batch_size, "batch_size"))
