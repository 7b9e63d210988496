"""The PGD step in `keras.ops`: per-sample norms, steepest-ascent directions, projections on the ball and the box.

One step is `pgd_step`: x' = box(x + project(x_adv + step * d - x)), with d the steepest-ascent direction of the
loss (`ascent_direction`). `deel_lip_ext.attacks.gradient_attacks` runs it for `fgsm`, `pgd` and
`pgd_perturbation`; adversarial training (`deel_lip_ext.regularization`) uses the same primitives.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

__all__ = [
    "as_column",
    "sample_norms",
    "ascent_direction",
    "clip_to_box",
    "project_to_ball",
    "pgd_step",
    "random_ball_start",
]


def as_column(per_sample: ArrayLike, x: ArrayLike) -> Any:
    """Reshapes a (batch,) tensor so that it broadcasts against `x`.

    Args:
        per_sample: tensor (batch,).
        x: the batch (batch, ...) it must broadcast against.

    Examples:
        >>> as_column(keras.ops.ones((4,)), keras.ops.zeros((4, 28, 28, 1))).shape  # (4, 1, 1, 1)
    """
    return ops.reshape(per_sample, (-1,) + (1,) * (len(x.shape) - 1))


def sample_norms(x: ArrayLike, norm: str = "l2"):
    """Per-sample norms of a batch, over all axes but the first.

    Args:
        x: batch tensor.
        norm: "l2", "linf" or "l1" (the dual of linf).

    Examples:
        >>> sample_norms(x_adv - x, "l2")  # shape (batch,)
    """
    flat = ops.reshape(x, (ops.shape(x)[0], -1))
    if norm == "l2":
        return ops.sqrt(ops.sum(ops.square(flat), axis=1))
    if norm == "linf":
        return ops.max(ops.abs(flat), axis=1)
    if norm == "l1":
        return ops.sum(ops.abs(flat), axis=1)
    raise ValueError(f"norm must be one of ('l2', 'linf', 'l1'), got {norm!r}.")


def ascent_direction(gradient: ArrayLike, norm: str):
    """Unit-norm direction of steepest ascent per sample: g/||g||_2 (0 where g = 0) or sign(g).

    Args:
        gradient: batch of gradients (batch, ...) of the loss with respect to the inputs.
        norm: "linf" (sign(g)); any other value ("l2") normalizes each sample to L2 norm 1.

    Examples:
        >>> ascent_direction(keras.ops.ones((2, 4)), "l2")  # rows of norm 1
    """
    if norm == "linf":
        return ops.sign(gradient)
    length = as_column(sample_norms(gradient, "l2"), gradient)
    safe_length = ops.where(length > 0, length, ops.ones_like(length))
    return ops.where(length > 0, gradient / safe_length, ops.zeros_like(gradient))


def clip_to_box(x: ArrayLike, clip_min: float | None, clip_max: float | None):
    """`x` clipped to [clip_min, clip_max] (None: unbounded on that side).

    Args:
        x: tensor or array to clip.
        clip_min: lower bound (a number, or an array broadcasting against `x`); None: no lower bound.
        clip_max: upper bound (a number, or an array broadcasting against `x`); None: no upper bound.
    """
    if clip_min is None and clip_max is None:
        return x
    low = -np.inf if clip_min is None else clip_min
    high = np.inf if clip_max is None else clip_max
    return ops.clip(x, low, high)


def project_to_ball(delta: ArrayLike, epsilon: float | ArrayLike, norm: str) -> Any:
    """The perturbations `delta` projected on the epsilon-ball (l2: rescaled per sample, linf: clipped).

    Args:
        delta: batch of perturbations (batch, ...).
        epsilon: radius of the ball: a number, or a per-sample tensor broadcasting against `delta`.
        norm: "linf" (each entry clipped to [-epsilon, epsilon]) or "l2" (each sample scaled down to norm epsilon).
    """
    if norm == "linf":
        return ops.clip(delta, -epsilon, epsilon)
    length = as_column(sample_norms(delta, "l2"), delta)
    return delta * ops.minimum(1.0, epsilon / ops.maximum(length, 1e-12))


def pgd_step(
    x_adv: ArrayLike,
    x_clean: ArrayLike,
    gradient: ArrayLike,
    epsilon: float | ArrayLike,
    step_size: float | ArrayLike,
    norm: str,
    clip_min: float | ArrayLike | None,
    clip_max: float | ArrayLike | None,
) -> Any:
    """One projected-gradient step: ascend along `gradient`, project on the ball around `x_clean`, clip to the box.

    Args:
        x_adv: current adversarial batch (batch, ...).
        x_clean: clean batch, the centers of the epsilon-balls.
        gradient: gradient of the loss at `x_adv` (its `ascent_direction` is followed).
        epsilon: radius of the ball: a number, or a per-sample tensor broadcasting against `x_adv`.
        step_size: length of the step, in the units of `norm` (a number or a broadcasting tensor).
        norm: "l2" or "linf".
        clip_min: lower bound of the input box (None: unbounded).
        clip_max: upper bound of the input box (None: unbounded).

    Examples:
        >>> x_adv = pgd_step(x_adv, x, gradient, 0.3, 0.05, "linf", 0.0, 1.0)
    """
    delta = project_to_ball(x_adv + step_size * ascent_direction(gradient, norm) - x_clean, epsilon, norm)
    return clip_to_box(x_clean + delta, clip_min, clip_max)


def random_ball_start(
    x: ArrayLike, epsilon: float | ArrayLike, norm: str, seed: int | keras.random.SeedGenerator | None = None
) -> Any:
    """A uniform random point of the epsilon-ball around each sample (keras.random, in-graph).

    l_inf: uniform in the box; l2: a Gaussian direction times eps * U^(1/D), D the sample size.

    Args:
        x: batch of centers (batch, ...), of a float dtype.
        epsilon: radius of the ball: a number, or a per-sample tensor broadcasting against `x`.
        norm: "linf" or "l2".
        seed: int or `keras.random.SeedGenerator` (None: unseeded).
    """
    if norm == "linf":
        return x + keras.random.uniform(ops.shape(x), -1.0, 1.0, dtype=x.dtype, seed=seed) * epsilon
    direction = ascent_direction(keras.random.normal(ops.shape(x), dtype=x.dtype, seed=seed), "l2")
    fraction = keras.random.uniform((ops.shape(x)[0],), dtype=x.dtype, seed=seed)
    radius = ops.power(fraction, 1.0 / ops.cast(ops.size(x[0]), x.dtype))
    return x + direction * as_column(radius, x) * epsilon


# ---------------------------------------------------------------- in-graph PGD (training)
