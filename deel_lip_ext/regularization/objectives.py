"""Training objectives of `RobustTrainingModel`: J0, J1 (FGSM), J2, J2-Lip (tulip), the 2019 penalty, PGD."""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_choice, check_clip_range, check_int, check_number
from deel_lip_ext.attacks.gradient_attacks import detached_ascent_direction, pgd_perturbation
from deel_lip_ext.attacks.steps import clip_to_box
from deel_lip_ext.regularization.gradients import (
    FINITE_DIFFERENCE_ORDERS,
    NORMS,
    PENALTY_SCALINGS,
    finite_difference_gradient_norms,
    lipschitz_penalty,
)

__all__ = [
    "PlainTraining",
    "FGSMTraining",
    "L2AdversarialTraining",
    "Tulip",
    "GradientNormPenalty",
    "PGDTraining",
    "get_objective",
]


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
        self.epsilon = check_number(epsilon, "epsilon", minimum=0)
        self.clip_min, self.clip_max = check_clip_range(clip_min, clip_max)

    def _step(self, direction):
        return self.epsilon * direction

    def perturb(self, model, loss_fn, x, y):
        direction = detached_ascent_direction(model, loss_fn, x, y, self.ascent_norm)
        return ops.stop_gradient(clip_to_box(x + self._step(direction), self.clip_min, self.clip_max))

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
        return self.epsilon * direction / ops.sqrt(ops.cast(ops.size(direction[0]), direction.dtype))


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
        self.lip_weight = check_number(lip_weight, "lip_weight", minimum=0)
        self.penalty_scaling = check_choice(penalty_scaling, "penalty_scaling", PENALTY_SCALINGS)

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
        self.lip_weight = check_number(lip_weight, "lip_weight", minimum=0)
        self.step = check_number(step, "step", minimum=0, strict=True)
        self.order = check_choice(order, "order", FINITE_DIFFERENCE_ORDERS)
        self.norm = check_choice(norm, "norm", NORMS)

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
        self.epsilon = check_number(epsilon, "epsilon", minimum=0, strict=True)
        self.norm = check_choice(norm, "norm", NORMS)
        self.steps = check_int(steps, "steps")
        self.step_size = check_number(step_size, "step_size", minimum=0, strict=True, allow_none=True)
        self.random_start = bool(random_start)
        self.clip_min, self.clip_max = check_clip_range(clip_min, clip_max)
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
