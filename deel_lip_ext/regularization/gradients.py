"""Per-sample losses, their input gradients and the gradient-norm penalties of tulip (J2-Lip, 2019 variant)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext._validation import check_choice, check_number
from deel_lip_ext.attacks.gradient_attacks import as_float_tensor, detached_ascent_direction
from deel_lip_ext.attacks.steps import sample_norms

__all__ = [
    "NORMS",
    "PENALTY_SCALINGS",
    "FINITE_DIFFERENCE_ORDERS",
    "per_sample_loss",
    "cross_entropy_loss",
    "margin_loss",
    "loss_input_gradient",
    "lipschitz_penalty",
    "finite_difference_gradient_norms",
]

NORMS = ("l2", "linf")
PENALTY_SCALINGS = ("sample", "batch_mean")
FINITE_DIFFERENCE_ORDERS = (1, 2)


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


def cross_entropy_loss(y_true: ArrayLike, logits: ArrayLike) -> Any:
    """Per-sample softmax cross-entropy of logits (integer or one-hot labels).

    Args:
        y_true: integer class indices (batch,) / (batch, 1), or one-hot labels (batch, C).
        logits: logits tensor (batch, C).

    Returns:
        A tensor (batch,).

    Examples:
        >>> cross_entropy_loss(y, model(x))  # shape (batch,)
    """
    return keras.losses.sparse_categorical_crossentropy(_labels_as_indices(y_true), logits, from_logits=True)


def margin_loss(y_true: ArrayLike, logits: ArrayLike) -> Any:
    r"""Carlini-Wagner margin $\max_{j \ne y} z_j - z_y$: positive exactly when misclassified.

    Args:
        y_true: integer class indices (batch,) / (batch, 1), or one-hot labels (batch, C).
        logits: logits tensor (batch, C).

    Returns:
        A tensor (batch,).

    Examples:
        >>> margin_loss(y, model(x))  # shape (batch,)
    """
    labels = _labels_as_indices(y_true)
    true_mask = ops.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    true_logit = ops.sum(logits * true_mask, axis=-1)
    # 1e9 keeps the true class out of the max without producing inf - inf.
    other_logit = ops.max(logits - 1e9 * true_mask, axis=-1)
    return other_logit - true_logit


ATTACK_LOSS_FUNCTIONS = {"ce": cross_entropy_loss, "cw": margin_loss}


def loss_input_gradient(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    training: bool = False,
    differentiable: bool = False,
) -> tuple[Any, Any, Any]:
    r"""Per-sample losses, predictions and per-sample input gradients of the loss.

    The gradient is that of the *summed* loss, so row i is $\nabla_{x_i} \ell_i$ (samples are
    independent unless the model couples them, e.g. BatchNorm with `training=True`).
    With `differentiable=True` the gradient stays differentiable with respect to the parameters
    inside `_autodiff.parameter_gradients` (double backprop).

    Args:
        model: a Keras model (or any callable `model(x, training=...)`).
        loss_fn: per-sample loss `loss_fn(y_true, y_pred)` -> (batch,).
        x: input batch (float).
        y: targets.
        training: mode of the forward pass (False freezes BatchNorm, disables dropout).
        differentiable: keep the gradient differentiable (double backprop); False detaches it.

    Returns:
        `(losses, y_pred, gradient)` with `gradient.shape == x.shape`.

    Examples:
        >>> losses, logits, g = loss_input_gradient(model, cross_entropy_loss, x, y)
    """
    autodiff.require_supported_backend("loss_input_gradient")

    def evaluate(inputs):
        y_pred = model(inputs, training=training)
        return loss_fn(y, y_pred), y_pred

    return autodiff.value_and_input_gradient(evaluate, as_float_tensor(x), differentiable=differentiable)


def lipschitz_penalty(
    model: keras.Model,
    loss_fn: Callable,
    x: ArrayLike,
    y: ArrayLike,
    lip_weight: float,
    penalty_scaling: str = "sample",
    training: bool = True,
) -> tuple[Any, Any]:
    r"""tulip's Lipschitz term lip_weight $\cdot \max_i \|\nabla_{x_i} \ell\|_2$, by double backprop.

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
    check_choice(penalty_scaling, "penalty_scaling", PENALTY_SCALINGS)
    _, y_pred, gradient = loss_input_gradient(model, loss_fn, x, y, training=training, differentiable=True)
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
    step = check_number(step, "step", minimum=0, strict=True)
    check_choice(order, "order", FINITE_DIFFERENCE_ORDERS)
    check_choice(norm, "norm", NORMS)
    x = as_float_tensor(x)
    direction = detached_ascent_direction(model, loss_fn, x, y, norm)
    y_pred = model(x, training=training)
    losses = loss_fn(y, y_pred)
    ahead = loss_fn(y, model(x + step * direction, training=training))
    if order == 1:
        return y_pred, losses, (ahead - losses) / step
    behind = loss_fn(y, model(x - step * direction, training=training))
    return y_pred, losses, (ahead - behind) / (2.0 * step)
