"""Robustness measurements of the tulip paper's table: adversarial distances, error at eps, Lipschitz estimates.

`adversarial_distances` / `median_adversarial_distance` bisect the radius of a
battery of PGD attacks (cross-entropy and margin loss, no random start);
`error_at_eps` runs `deel_lip_ext.attacks.pgd` at one radius;
`lipschitz_estimate` is an empirical *lower* bound of the constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext import attacks, utils
from deel_lip_ext._validation import check_choice, check_clip_range, check_inside_box, check_int, check_number
from deel_lip_ext.attacks.gradient_attacks import pgd_perturbation
from deel_lip_ext.attacks.steps import sample_norms
from deel_lip_ext.regularization.gradients import ATTACK_LOSS_FUNCTIONS, NORMS

__all__ = ["adversarial_distances", "median_adversarial_distance", "error_at_eps", "error_curve", "lipschitz_estimate"]

ATTACK_LOSSES = tuple(ATTACK_LOSS_FUNCTIONS)


def _classifier_and_labels(model, x, y, clip_min, clip_max):
    """`(model, x, class indices)` for the measurements, which read the argmax of C >= 2 logits.

    A single-logit binary model (class 1 iff z > 0, the library's convention, labels {0, 1} or
    {-1, 1}) is measured as the two logits (0, z), which decide the same way everywhere.
    """
    x = np.asarray(x, dtype=keras.config.floatx())
    check_inside_box(x, clip_min, clip_max)
    y = np.asarray(y)
    if model.output_shape[-1] != 1:
        return model, x, (y.argmax(axis=-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1))
    inputs = keras.Input(model.input_shape[1:])
    logit = model(inputs)
    two_logits = keras.Model(inputs, ops.concatenate([ops.zeros_like(logit), logit], axis=-1))
    return two_logits, x, (y.reshape(-1) > 0).astype("int64")


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
                ATTACK_LOSS_FUNCTIONS[attack_loss],
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

    return autodiff.graph_function(run, model.variables)


def _check_measurement_arguments(norm, attack_steps, batch_size, clip_min, clip_max):
    check_choice(norm, "norm", NORMS)
    check_int(attack_steps, "attack_steps")
    check_int(batch_size, "batch_size")
    check_clip_range(clip_min, clip_max)


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
        model: classifier returning logits (the argmax is the predicted class), or one logit
            (class 1 iff it is > 0).
        x: inputs (numpy), in [clip_min, clip_max].
        y: integer or one-hot labels ({0, 1} or {-1, 1} for one logit).
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
    bisection_steps = check_int(bisection_steps, "bisection_steps", minimum=0)
    model, x, labels = _classifier_and_labels(model, x, y, clip_min, clip_max)
    if max_epsilon is None:
        if clip_min is None or clip_max is None:
            raise ValueError("`max_epsilon` is required when `clip_min` or `clip_max` is None.")
        width = clip_max - clip_min
        max_epsilon = width * np.sqrt(x[0].size) if norm == "l2" else width
    max_epsilon = check_number(max_epsilon, "max_epsilon", minimum=0, strict=True)
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
        model: classifier returning logits, or one logit (class 1 iff it is > 0).
        x: inputs (numpy), in [clip_min, clip_max].
        y: integer or one-hot labels ({0, 1} or {-1, 1} for one logit).
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
    epsilon = check_number(epsilon, "epsilon", minimum=0)
    model, x, labels = _classifier_and_labels(model, x, y, clip_min, clip_max)
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
    return utils.evaluate_lip_const(model, x, batch_size=check_int(batch_size, "batch_size"))
